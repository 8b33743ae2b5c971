"""Tests for tfmm.serving_compat: the TF Serving / TF Text op table and the verdict on op lists."""

import json

import pytest

from tfmm.serving import serving_compat

BERT_TEXT_OPS = ["CaseFoldUTF8", "RegexSplitWithOffsets", "FastWordpieceTokenizeWithOffsets", "TFText>RoundRobinTrim"]


def test_table_maps_each_release_line_to_its_tf_text():
    table = serving_compat.load_table()
    assert serving_compat.release_lines() == [f"2.{minor}" for minor in range(12, 21)]
    assert {line: table["tf_serving"][line]["tf_text"] for line in ("2.12", "2.19", "2.20")} == {
        "2.12": "2.12.1", "2.19": "2.12.1", "2.20": "2.20.0"}
    assert any("workspace.bzl" in s for s in table["sources"]) and any("2267" in s for s in table["sources"])
    assert "TFText>RoundRobinTrim" not in serving_compat.ops_in_release("2.19")
    assert "TFText>RoundRobinTrim" in serving_compat.ops_in_release("2.20")
    assert set(BERT_TEXT_OPS[:3]) <= set(serving_compat.ops_in_release("2.12"))
    with pytest.raises(ValueError, match=r"release line must be one of \['2.12'.*received '2.11'"):
        serving_compat.ops_in_release("2.11")


def test_core_only_graph_loads_in_any_release():
    verdict = serving_compat.serving_verdict([])
    assert verdict == {"core_ops_only": True, "non_core_ops": {}, "oldest_tf_serving": "any 2.x",
                       "unknown_ops": [], "notes": [], "summary": "core only — loads in any TF Serving 2.x"}


def test_kerashub_bert_ops_need_tf_serving_2_20_with_an_icu_note():
    verdict = serving_compat.serving_verdict(BERT_TEXT_OPS)
    assert not verdict["core_ops_only"]
    assert verdict["non_core_ops"] == {"CaseFoldUTF8": "2.12", "FastWordpieceTokenizeWithOffsets": "2.12",
                                       "RegexSplitWithOffsets": "2.12", "TFText>RoundRobinTrim": "2.20"}
    assert verdict["oldest_tf_serving"] == "2.20"
    assert verdict["summary"].startswith("non-core ops CaseFoldUTF8 (TF Serving 2.12+), ")
    assert "TFText>RoundRobinTrim (TF Serving 2.20+); loads in TF Serving 2.20+;" in verdict["summary"]
    (note,) = verdict["notes"]
    assert note.startswith("on TF Serving 2.20, CaseFoldUTF8 needs ICU normalization data") and "#1613" in note


def test_sentencepiece_ops_load_from_the_oldest_line():
    verdict = serving_compat.serving_verdict(["SentencepieceOp", "SentencepieceTokenizeOp", "SentencepieceOp"])
    assert verdict["oldest_tf_serving"] == "2.12" and verdict["notes"] == []
    two = serving_compat.serving_verdict(["NormalizeUTF8", "CaseFoldUTF8"])
    assert two["notes"][0].startswith("on TF Serving 2.20, CaseFoldUTF8, NormalizeUTF8 need ICU")
    assert verdict["summary"] == ("non-core ops SentencepieceOp (TF Serving 2.12+), SentencepieceTokenizeOp "
                                  "(TF Serving 2.12+); loads in TF Serving 2.12+ (the table starts at 2.12)")


def test_an_op_the_table_does_not_know_is_a_serving_risk():
    verdict = serving_compat.serving_verdict(["CaseFoldUTF8", "MyCustomOp"])
    assert verdict["oldest_tf_serving"] is None and verdict["unknown_ops"] == ["MyCustomOp"]
    assert "MyCustomOp (in no TF Serving release of the table)" in verdict["summary"]
    assert "SERVING RISK: no official TF Serving release is known to have ['MyCustomOp']" in verdict["summary"]
    json.dumps(verdict)  # JSON-ready, for tfmm.json


def test_a_table_without_since_versions_is_refused(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"tf_serving": {}, "tf_text_ops": {"X": {}}}))
    with pytest.raises(ValueError, match=r"tf_text_ops\['X'\] needs since_tf_text like '2.13.0'; received None"):
        serving_compat.load_table(str(path))


def test_python_callback_ops_fail_the_ops_check():
    """A tokenizer that runs Python (tf.py_function) fails `tfmm export`, not the server."""
    import tensorflow as tf

    from tfmm.serving.export_check import _ops_check

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(text):
        return tf.py_function(lambda t: tf.strings.length(t), [text], tf.int32)

    graph = tokenize.get_concrete_function().graph.as_graph_def()
    ops = {node.op for node in graph.node}
    assert serving_compat.python_callbacks(ops) == ["EagerPyFunc"]
    assert serving_compat.python_callbacks(["StringSplitV2", "RegexSplitWithOffsets"]) == []
    check = _ops_check({"tensorflow": sorted(ops), "tensorflow_text": [], "unregistered": []},
                       serving_compat.serving_verdict([]))
    assert not check.ok and "calls back into Python (EagerPyFunc)" in check.detail
    ok = _ops_check({"tensorflow": ["StringSplitV2"], "tensorflow_text": [], "unregistered": []},
                    serving_compat.serving_verdict([]))
    assert ok.ok and ok.detail == serving_compat.CORE_ONLY
