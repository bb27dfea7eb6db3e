"""The Go text/template evaluator against the semantics Go's documentation states (examples from
https://pkg.go.dev/text/template where it gives them), and its refusal of what it does not support."""

from __future__ import annotations

import pytest

from tunelab.export.gotemplate import GoTemplateError, render


def test_trim_markers_as_in_the_go_docs() -> None:
    assert render("{{23 -}} < {{- 45}}", {}) == "23<45"  # the example in text/template's documentation
    assert render("a  \n\t{{- 1 }}\n  b", {}) == "a1\n  b"
    assert render("{{-3}}", {}) == "-3"  # no space after the dash: a negative number, not a trim marker


def test_fields_variables_and_scope() -> None:
    data = {"A": {"B": "x"}, "L": [1, 2, 3]}
    assert render("{{ .A.B }}{{ $v := .A }}{{ $v.B }}{{ $.A.B }}", data) == "xxx"
    assert render("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}", {}) == "2"  # = assigns the outer one
    with pytest.raises(GoTemplateError, match="undefined variable"):  # := inside a block ends with the block
        render("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}", {})
    with pytest.raises(GoTemplateError, match="can't evaluate field C"):
        render("{{ .A.C }}", data)


def test_if_else_if_and_truth() -> None:
    t = '{{ if eq .R "a" }}A{{ else if eq .R "b" "c" }}BC{{ else }}other{{ end }}'
    assert [render(t, {"R": r}) for r in "abcd"] == ["A", "BC", "BC", "other"]
    falsy = [False, 0, "", [], {}, None]
    assert [render("{{ if .V }}t{{ else }}f{{ end }}", {"V": v}) for v in falsy] == ["f"] * 6
    assert render("{{ if .V }}t{{ end }}", {"V": [0]}) == "t"


def test_range_binds_index_and_element_and_else() -> None:
    t = "{{ range $i, $m := .L }}{{ $i }}={{ $m }}{{ . }};{{ else }}empty{{ end }}"
    assert render(t, {"L": ["a", "b"]}) == "0=aa;1=bb;"
    assert render(t, {"L": []}) == "empty"
    assert render("{{ range $m := .L }}{{ $m }}{{ end }}", {"L": ["a", "b"]}) == "ab"


def test_functions() -> None:
    d = {"L": ["a", "b", "c"], "S": "hello"}
    assert render("{{ len .L }} {{ len (slice .L 1) }} {{ slice .S 1 3 }} {{ index .L 2 }}", d) == "3 2 el c"
    assert render('{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 "" 3 }} {{ or 0 false }}', {}) == "0 2 3 false"
    assert render("{{ not 0 }} {{ ne 1 2 }} {{ lt 1 2 }} {{ ge 1 2 }}", {}) == "true true true false"
    assert render('{{ "a\\nb\\"c" }}', {}) == 'a\nb"c'


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{{ .S | printf }}", "pipelines with \\|"),
        ("{{ printf .S }}", "function 'printf' not defined"),
        ("{{ if true }}x", "unclosed"),
        ("{{ end }}", "unexpected"),
        ("x {{ .S", "unclosed action"),
    ],
)
def test_unsupported_or_broken_templates_raise(template: str, error: str) -> None:
    with pytest.raises(GoTemplateError, match=error):
        render(template, {"S": "s"})
