"""The README's example must run as printed and do what its comment says."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_and_converges(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    np.testing.assert_allclose(np.asarray(namespace["params"]["w"]), 3.0, atol=1e-2)
    printed = [float(x) for x in re.findall(r"[-\d.]+", capsys.readouterr().out)]
    np.testing.assert_allclose(printed, 3.0, atol=1e-2)


def test_readme_shows_the_two_newcomer_commands():
    text = README.read_text()
    assert "gradlab sweep" in text
    assert "python -m pytest" in text


def test_no_formula_is_mangled_by_a_string_escape():
    # "\beta", "\alpha", "\times", "\rho", "\nabla" in a non-raw string become a backspace, a bell,
    # a tab, a carriage return or a line break: the rendered docs then lose the formula.
    import ast

    root = README.parent
    control = re.compile(r"[\x07\x08\x0b\x0c\r\t]")
    found = []
    for path in sorted((root / "gradlab").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if control.search(node.value):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    for path in [README, *sorted((root / "docs").rglob("*.md"))]:
        if control.search(path.read_text()):
            found.append(str(path.relative_to(root)))
    assert not found, found
