"""Templates: placeholders, literal braces, blank rows, messages columns, request bodies."""

import json

import pytest

from pipeline.errors import InputError
from pipeline.prompts import BodyEncoder, Template, is_blank, parse_messages


def test_placeholders_and_literal_json_braces():
    template = Template('Reply as {"label": "positive"} or {{x}} for: {review} ({product})')
    assert template.columns == ("review", "product")
    assert template.render({"review": "Nice", "product": "Mug"}) == \
        'Reply as {"label": "positive"} or {x} for: Nice (Mug)'


def test_values_are_inserted_verbatim_even_with_braces():
    assert Template("{a}").render({"a": "{b} {0} %s"}) == "{b} {0} %s"


def test_null_renders_empty_and_numbers_as_text():
    assert Template("[{a}] {b}").render({"a": None, "b": 4}) == "[] 4"


def test_column_names_with_spaces_and_repeats():
    template = Template("{review text} / {review text}")
    assert template.columns == ("review text",)
    assert template.render({"review text": "x"}) == "x / x"


def test_missing_column_names_it_and_lists_the_columns():
    with pytest.raises(InputError) as info:
        Template("{review} {rating}").check_columns(["review", "stars"])
    assert "'rating'" in str(info.value) and "review, stars" in str(info.value)


def test_blank_detection():
    assert is_blank([None, "  ", "\n"])
    assert not is_blank([None, "x"])
    assert not is_blank([0])


def test_messages_from_json_text_and_structs():
    text = '[{"role": "user", "content": "hi"}]'
    assert parse_messages(text) == [{"role": "user", "content": "hi"}]
    structs = [{"role": "system", "content": "s", "name": None}, {"role": "user", "content": "u", "name": None}]
    assert parse_messages(structs) == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert parse_messages(None) is None and parse_messages("[]") is None and parse_messages("  ") is None


@pytest.mark.parametrize("cell, reason", [
    ("{not json", "not valid JSON"),
    ('{"role": "user"}', "must be a list"),
    ('[{"role": "wizard", "content": "x"}]', "role"),
    ('[{"role": "user"}]', "no content"),
])
def test_bad_messages_cells_say_why(cell, reason):
    with pytest.raises(ValueError, match=reason):
        parse_messages(cell)


def test_body_encoder_keeps_params_and_utf8():
    encoder = BodyEncoder("gpt-4o-mini", {"temperature": 0, "stop": ["\n"]})
    body = encoder.encode([{"role": "user", "content": "Größe {M} ✓"}])
    assert json.loads(body) == {"messages": [{"role": "user", "content": "Größe {M} ✓"}],
                                "model": "gpt-4o-mini", "temperature": 0, "stop": ["\n"]}
    assert "Größe".encode() in body


def test_messages_column_system_prompt_renders_placeholders():
    import pyarrow as pa

    from pipeline.prompts import RowRenderer

    renderer = RowRenderer(model="m", params={}, template=None, system="Reply in {lang} {{as is}}",
                           messages_column="messages", required_columns=())
    batch = pa.record_batch({"lang": ["German", None],
                             "messages": ['[{"role": "user", "content": "Hi"}]'] * 2})
    bodies = [json.loads(body) for body, _ in renderer.render_batch(batch)]
    assert [b["messages"][0] for b in bodies] == [{"role": "system", "content": "Reply in German {as is}"},
                                                  {"role": "system", "content": "Reply in  {as is}"}]
