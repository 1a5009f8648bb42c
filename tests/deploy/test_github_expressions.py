"""GitHub's expression language, as its documentation states it, and as our workflows use it."""

from __future__ import annotations

import math
from typing import Any

import pytest

from imdb_deploy.github_expressions import (
    ExpressionError,
    Known,
    Status,
    condition,
    evaluate,
    number,
    render,
    text,
    truthy,
)

CONTEXTS: dict[str, Any] = {
    "github": {"ref": "refs/heads/main", "event_name": "push", "repository_owner": "Owner"},
    "env": {"ROOT_SESSIONS": '["integration", "images"]', "EMPTY": ""},
    "matrix": {"session": "images"},
    "needs": {
        "plan": {"result": "success", "outputs": {"build": "true", "digest": "sha256:ab"}},
        "train": {"result": "skipped", "outputs": {}},
    },
    "secrets": {"DEPLOY_SSH_KEY": "key"},
    "vars": {},
}


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("matrix.session == 'images' && '--trivy' || ''", "--trivy"),
        ("matrix.session == 'lint' && '--trivy' || ''", ""),
        ("contains(fromJSON(env.ROOT_SESSIONS), matrix.session)", True),
        ("contains(fromJSON(env.ROOT_SESSIONS), 'lint')", False),
        ("join(needs.*.result, ' ')", "success skipped"),
        ("needs.plan.outputs.build == 'true'", True),
        ("needs['plan'].outputs['digest']", "sha256:ab"),
        ("needs.nothing.outputs.build", None),
        ("github.event_name == 'PUSH'", True),  # strings compare without regard to case
        ("startsWith(github.ref, 'refs/heads/')", True),
        ("endsWith(github.ref, '/develop')", False),
        ("contains('Hello world', 'WORLD')", True),
        ("format('{0}-{1}-{{x}}', 'a', 3)", "a-3-{x}"),
        ("'it''s'", "it's"),
        ("1 == '1'", True),
        ("null == 0", True),
        ("true == 1", True),
        ("2 > 10", False),
        ("'b' > 'A'", True),
        ("!secrets.MISSING", True),
        ("vars.MLFLOW_TRACKING_URI || 'none'", "none"),
        ("0x10 == 16", True),
        ("(1 == 2) || (3 >= 3 && !false)", True),
        ("toJSON(matrix)", '{\n  "session": "images"\n}'),
        ("github.repository_owner", "Owner"),
    ],
)
def test_expressions_evaluate_as_github_documents(expression: str, value: Any) -> None:
    assert evaluate(expression, CONTEXTS) == value


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (Status(), {"success": True, "failure": False, "cancelled": False, "always": True}),
        (Status(failed=True), {"success": False, "failure": True, "cancelled": False}),
        (Status(cancelled=True), {"success": False, "cancelled": True}),
    ],
)
def test_status_functions_see_the_run(status: Status, expected: dict[str, bool]) -> None:
    for name, value in expected.items():
        assert evaluate(f"{name}()", CONTEXTS, status) is value


def test_an_if_without_a_status_function_also_needs_success() -> None:
    assert condition("github.event_name == 'push'", CONTEXTS)
    assert not condition("github.event_name == 'push'", CONTEXTS, Status(failed=True))
    both = "${{ !cancelled() && needs.plan.outputs.build == 'true' }}"
    assert condition(both, CONTEXTS, Status(failed=True))  # it names a status function itself
    assert not condition(both, CONTEXTS, Status(cancelled=True))
    assert condition("always()", CONTEXTS, Status(failed=True, cancelled=True))


def test_render_keeps_a_whole_expressions_type_and_makes_text_of_parts() -> None:
    assert render("${{ fromJSON(env.ROOT_SESSIONS) }}", CONTEXTS) == ["integration", "images"]
    assert render("cd-${{ github.ref }} (${{ 2 > 1 }})", CONTEXTS) == "cd-refs/heads/main (true)"
    assert render(42, CONTEXTS) == 42
    assert render("no expression", CONTEXTS) == "no expression"
    assert render("${{ env.EMPTY }}${{ matrix.session }}", CONTEXTS) == "images"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("hashFiles('uv.lock')", "function not emulated here: hashFiles"),
        ("inputs.version", "context not emulated here: inputs"),
        ("github.ref ==", "expected more"),
        ("(github.ref", "expected \\)"),
        ("github.ref github.sha", "unexpected 'github'"),
        ("'open", "cannot read"),
        ("format('{1}', 'a')", "no argument 1"),
        ("fromJSON('{not json')", "fromJSON"),
    ],
)
def test_what_is_not_understood_is_an_error_never_a_guess(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        evaluate(expression, CONTEXTS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 0.0), (True, 1.0), ("", 0.0), (" 12 ", 12.0), ("0x1F", 31.0), (2, 2.0)],
)
def test_numbers_convert_as_github_does(value: Any, expected: float) -> None:
    assert number(value) == expected


def test_what_has_no_number_is_nan_and_falsy() -> None:
    assert math.isnan(number("abc"))
    assert math.isnan(number([]))
    assert not truthy(number("abc"))
    assert [truthy([]), truthy({}), truthy(""), truthy(None)] == [True, True, False, False]


def test_values_become_text_as_in_a_run_step() -> None:
    assert [text(None), text(True), text(3.0), text(2.5), text("x")] == [
        "",
        "true",
        "3",
        "2.5",
        "x",
    ]
    assert text(["a"]) == '[\n  "a"\n]'


def test_a_known_context_refuses_what_it_does_not_emulate() -> None:
    contexts = {"github": Known({"ref": "refs/heads/main"})}
    assert evaluate("github.ref", contexts) == "refs/heads/main"
    with pytest.raises(ExpressionError, match="not emulated here: event"):
        evaluate("github.event.pull_request.title", contexts)
