"""Checks that run inside a notebook's kernel, sent there as a cell by ``tests/test_notebooks.py`` (so this module
imports nothing from the test suite and is not collected by pytest).

A notebook wires a plain callback to ``widgets.interact(callback, name=widgets.Slider(...), ...)``; ``interact``
returns the callback with the interactive widget as ``callback.widget``.  The checks find it by name, compare its
controls with what the test expects, move each control to a non-default value as a user dragging a slider does
(``interact`` then re-runs the callback into its output widget), and check that every redraw drew a figure and
raised nothing.  nbclient plays the front end: it routes the output widget's messages into the widget's state and
syncs them back to the kernel, so the outputs of a redraw are visible from the next cell on.
"""

import inspect


def interactive_of(namespace, name):
    """The callback ``name`` of the notebook's namespace and the ``interactive`` widget ``interact`` attached."""
    from ipywidgets import interactive

    assert name in namespace, f"the notebook defines no callback {name!r}"
    callback = namespace[name]
    ui = getattr(callback, "widget", None)
    assert isinstance(ui, interactive), f"{name} is not wired to widgets.interact (it has no interactive .widget)"
    return callback, ui


def controls_of(ui):
    """The controls of an ``interactive``, by the parameter they set."""
    return {w.description: w for w in ui.kwargs_widgets}


def check_controls(namespace, name, expected):
    """One control per parameter of ``name``, each of the expected type and attributes (``expected``: parameter ->
    ``{"type": class name, attribute: value}``), each starting at the callback's default."""
    callback, ui = interactive_of(namespace, name)
    params = inspect.signature(callback).parameters
    controls = controls_of(ui)
    assert set(controls) == set(params) == set(expected), \
        f"{name}: controls {sorted(controls)}, parameters {sorted(params)}, expected {sorted(expected)}"
    for param, want in expected.items():
        control = controls[param]
        assert type(control).__name__ == want["type"], \
            f"{name}: control {param} is a {type(control).__name__}, expected a {want['type']}"
        for attr, value in want.items():
            if attr == "type":
                continue
            got = getattr(control, attr)
            got = list(got) if isinstance(got, tuple) else got
            assert got == value, f"{name}: control {param}.{attr} = {got!r}, expected {value!r}"
        default = params[param].default
        assert control.value == default, \
            f"{name}: control {param} starts at {control.value!r}, the default is {default!r}"


def check_drawn(namespace, name):
    """The last (re)draw of ``name`` in its output widget holds a figure and no error."""
    _, ui = interactive_of(namespace, name)
    outputs = list(ui.out.outputs)
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{name} raised when redrawn by its widgets:\n" + "\n".join(
        f"{e['ename']}: {e['evalue']}\n" + "\n".join(e.get("traceback", [])) for e in errors)
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures >= 1, f"{name} drew no figure in its widget output; outputs: {str(outputs)[:500]}"


def move(namespace, name, param, value):
    """Set the control of ``param`` to ``value`` (not its current value), as a user does; ``interact`` re-runs the
    callback with it.  The output widget is cleared first, so :func:`check_drawn` sees only this redraw."""
    _, ui = interactive_of(namespace, name)
    control = controls_of(ui)[param]
    assert control.value != value, f"{name}: {param} = {value!r} is its current value, not a change"
    ui.out.clear_output()
    control.value = value
    assert control.value == value, f"{name}: control {param} refused {value!r} (it holds {control.value!r})"
    assert ui.kwargs[param] == value, f"{name}: interact did not pass {param} = {value!r} (kwargs {ui.kwargs})"
