"""The duplex rules: the state head's decision, the chat template pieces, text segmentation, clean-up."""

from __future__ import annotations

import math

import pytest
import torch

from app.model.checkpoint_io.layout import FreezeOmni
from app.model.llm.duplex import ChatTemplate, ListenState, PromptTokens, decide_state
from app.model.speech_out.text_segments import Segment, Segmenter, post_process

PUBLISHED_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<audio><|im_end|>\n<|im_start|>assistant\n"
)


def _logits(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# --- the state rule ---------------------------------------------------------------------------


def test_state_probs_are_a_softmax_over_the_first_three_logits_only() -> None:
    logits = _logits(0.5, -1.0, 2.0, 1000.0)
    decision = decide_state(logits)
    expected = torch.softmax(logits[:3], dim=-1).tolist()
    assert decision.probs == pytest.approx(expected, abs=1e-7)
    assert sum(decision.probs) == pytest.approx(1.0, abs=1e-6)
    assert decision.state is ListenState.IGNORE  # p2 = 0.79; the huge 4th logit plays no part


def test_a_huge_fourth_logit_alone_means_listen() -> None:
    decision = decide_state(_logits(0.0, 0.0, 0.0, 1e6))
    assert decision.probs == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert decision.state is ListenState.LISTEN


@pytest.mark.parametrize(
    ("logits", "state"),
    [
        ((0.0, 3.0, 0.0, 0.0), ListenState.ANSWER),  # p1 = 0.91
        ((0.0, 0.0, 3.0, 0.0), ListenState.IGNORE),  # p2 = 0.91
        ((3.0, 0.0, 0.0, 0.0), ListenState.LISTEN),
        ((0.0, 0.3, 0.3, 0.0), ListenState.LISTEN),  # nobody above 0.5
        ((-math.inf, 0.0, 0.0, 9.0), ListenState.LISTEN),  # exactly 0.5 each: the test is strict
    ],
)
def test_state_rule_thresholds(logits: tuple[float, ...], state: ListenState) -> None:
    assert decide_state(_logits(*logits)).state is state


def test_state_two_is_checked_before_state_one() -> None:
    # With a lower threshold both states qualify; the published order lets state 2 win.
    logits = _logits(-5.0, 1.0, 1.0, 0.0)
    decision = decide_state(logits, threshold=0.4)
    assert decision.probs[1] > 0.4 and decision.probs[2] > 0.4
    assert decision.state is ListenState.IGNORE
    # and state 1 still wins alone when state 2 does not qualify
    assert decide_state(_logits(-5.0, 1.0, 0.5, 0.0), threshold=0.4).state is ListenState.ANSWER


def test_state_rule_reads_low_precision_logits_in_fp32() -> None:
    logits = _logits(0.1, 2.5, -0.4, 7.0).to(torch.bfloat16)
    decision = decide_state(logits)
    assert decision.state is ListenState.ANSWER
    assert decision.probs == pytest.approx(torch.softmax(logits.float()[:3], -1).tolist(), abs=1e-6)


def test_listen_state_values_are_the_published_names() -> None:
    assert [s.value for s in (ListenState.LISTEN, ListenState.ANSWER, ListenState.IGNORE)] == [
        "cl",
        "ss",
        "el",
    ]


# --- the chat template ------------------------------------------------------------------------


def test_published_template_splits_into_role_prefix_and_suffix() -> None:
    template = ChatTemplate.parse(PUBLISHED_TEMPLATE)
    assert template.default_role == "You are a helpful assistant."
    assert template.user_prefix == "\n<|im_start|>user\n"
    assert template.assistant_suffix == "<|im_end|>\n<|im_start|>assistant\n"
    assert template.system_text(None) == "<|im_start|>system\nYou are a helpful assistant."
    assert template.system_text("Talk like a pirate.") == "<|im_start|>system\nTalk like a pirate."


@pytest.mark.parametrize(
    "bad",
    [
        PUBLISHED_TEMPLATE.replace("<audio>", ""),
        PUBLISHED_TEMPLATE.replace("<|im_start|>system\n", "<|im_start|>user\n", 1),
    ],
)
def test_template_without_audio_or_system_head_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="chat_template"):
        ChatTemplate.parse(bad)


def test_turn_opening_is_im_end_then_the_user_prefix() -> None:
    tokens = PromptTokens(im_end=7, user_prefix=[1, 2, 3], assistant_suffix=[7, 4])
    assert tokens.turn_opening == [7, 1, 2, 3]


def test_loaded_prompt_tokens_spell_the_template_pieces(tiny_model: FreezeOmni) -> None:
    tokenizer = tiny_model.tokenizer
    tokens = tiny_model.prompt_tokens
    assert tiny_model.template == ChatTemplate.parse(PUBLISHED_TEMPLATE)
    assert tokenizer.convert_ids_to_tokens(tokens.im_end) == "<|im_end|>"
    assert tokenizer.decode(tokens.user_prefix) == "\n<|im_start|>user\n"
    assert tokenizer.decode(tokens.assistant_suffix) == "<|im_end|>\n<|im_start|>assistant\n"


# --- segmentation -----------------------------------------------------------------------------


def _feed(segmenter: Segmenter, pieces: list[str], first_id: int = 100) -> list[Segment | None]:
    return [segmenter.push(first_id + i, f"h{first_id + i}", piece) for i, piece in enumerate(pieces)]


def test_sentence_end_cuts_only_from_the_fourth_token() -> None:
    segmenter = Segmenter()
    assert _feed(segmenter, ["Yes", "."]) == [None, None]
    results = _feed(segmenter, [" I", " am", " here", "."], first_id=102)
    assert results[:3] == [None, None, None]
    segment = results[3]
    assert segment is not None
    assert segment.text == "Yes. I am here."
    assert segment.token_ids == [100, 101, 102, 103, 104, 105]
    assert segment.hidden_rows == [f"h{i}" for i in range(100, 106)]


@pytest.mark.parametrize("end", [".", "?", "!", "。", "？", "！", "：", "\n"])
def test_every_sentence_end_cuts_at_four_tokens(end: str) -> None:
    segmenter = Segmenter()
    # a later segment, so only sentence ends (not commas) may cut
    segmenter.segments_emitted = 1
    results = _feed(segmenter, ["a", " b", " c", end])
    assert results[:3] == [None, None, None]
    assert results[3] is not None and results[3].text == f"a b c{end}"


def test_comma_and_colon_cut_the_first_segment() -> None:
    for soft in (",", "，", ":"):
        segmenter = Segmenter()
        results = _feed(segmenter, ["Well", " you", " see", soft])
        assert results[3] is not None and results[3].text == f"Well you see{soft}"


def test_comma_cuts_a_later_segment_only_after_twenty_tokens() -> None:
    segmenter = Segmenter()
    assert _feed(segmenter, ["One", " two", " three", "."])[3] is not None
    # 18 words, then a comma as token 19: too early for a later segment
    pieces = [f" w{i}" for i in range(18)] + [","]
    assert _feed(segmenter, pieces) == [None] * 19
    # token 20 ends in a comma too: now it cuts
    [cut] = _feed(segmenter, [" x,"], first_id=500)
    assert cut is not None
    assert len(cut.token_ids) == 20
    assert cut.text.endswith(", x,")


def test_a_full_stop_after_a_digit_does_not_cut() -> None:
    segmenter = Segmenter()
    segmenter.segments_emitted = 1
    assert _feed(segmenter, ["It", " costs", " 3", "."]) == [None] * 4
    results = _feed(segmenter, ["5", " euros", "."], first_id=104)
    assert results[:2] == [None, None]
    assert results[2] is not None and results[2].text == "It costs 3.5 euros."


def test_flush_returns_the_rest_and_resets() -> None:
    segmenter = Segmenter()
    _feed(segmenter, ["and", " then"])
    rest = segmenter.flush()
    assert rest is not None and rest.text == "and then" and rest.token_ids == [100, 101]
    assert segmenter.flush() is None
    _feed(segmenter, [" ", "\n"])
    assert segmenter.flush() is None  # whitespace only: nothing to speak
    assert segmenter.current.token_ids == []


def test_a_segment_without_punctuation_is_cut_at_max_tokens() -> None:
    words = [f" w{i}" for i in range(30)]
    assert _feed(Segmenter(), words) == [None] * 30  # no cap by default
    segmenter = Segmenter(max_tokens=6)
    results = _feed(segmenter, words[:12])
    assert [i for i, r in enumerate(results) if r is not None] == [5, 11]
    assert results[5] is not None and results[5].token_ids == list(range(100, 106))


# --- the released offline script's rule ("offline") ------------------------------------------


def _cuts(segmenter: Segmenter, pieces: list[str]) -> list[str]:
    """Texts of the segments cut while pushing `pieces`, then the flushed rest."""
    cut = [s.text for s in _feed(segmenter, pieces) if s is not None]
    if rest := segmenter.flush():
        cut.append(rest.text)
    return cut


@pytest.mark.parametrize("end", [".", "?", "!", "。", "？", "！", "：", "\n"])
def test_offline_rule_cuts_at_every_sentence_end_without_a_minimum(end: str) -> None:
    segmenter = Segmenter.for_rule("offline")
    first = _feed(segmenter, [f"Yes{end}"])
    assert first[0] is not None and first[0].text == f"Yes{end}" and first[0].token_ids == [100]
    assert _cuts(segmenter, ["I", end, " Go", " on", end]) == ["I" + end, " Go on" + end]


def test_offline_rule_keeps_a_full_stop_after_a_digit() -> None:
    segmenter = Segmenter.for_rule("offline")
    assert _cuts(segmenter, ["It", " costs", " 3", ".", "5", " euros", ".", " Version", " 2.", "0", "!"]) == [
        "It costs 3.5 euros.",
        " Version 2.0!",
    ]
    # A digit followed by other punctuation still ends a segment.
    assert _cuts(Segmenter.for_rule("offline"), ["Route", " 66", "?", " Yes", " 7", "!"]) == [
        "Route 66?",
        " Yes 7!",
    ]


def test_offline_rule_never_cuts_at_commas_or_ascii_colons() -> None:
    pieces = ["Well", ",", " you", " see", "，", " one", ":", " two", ";"] + [f" w{i}," for i in range(30)]
    segmenter = Segmenter.for_rule("offline")
    assert _feed(segmenter, pieces) == [None] * len(pieces)  # not the first segment, not after 20 tokens
    rest = segmenter.flush()
    assert rest is not None and len(rest.token_ids) == len(pieces)


def test_offline_rule_has_no_length_cap_and_the_server_rule_keeps_its_own() -> None:
    words = [f" w{i}" for i in range(200)]
    assert _feed(Segmenter.for_rule("offline"), words) == [None] * 200
    server = Segmenter.for_rule("server", max_tokens=6)
    assert (server.min_tokens, server.soft_after_tokens, server.max_tokens) == (4, 20, 6)
    # The same stream cut both ways: the server waits for 4 tokens and cuts at the first comma.
    pieces = ["Hi", ".", " Well", ",", " I", " am", " fine", ".", " Bye", "."]
    assert _cuts(Segmenter.for_rule("offline"), pieces) == ["Hi.", " Well, I am fine.", " Bye."]
    assert _cuts(Segmenter.for_rule("server"), pieces) == ["Hi. Well,", " I am fine.", " Bye."]


def test_an_unknown_segmentation_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown segmentation 'greedy'; use one of server, offline"):
        Segmenter.for_rule("greedy")


# --- post-processing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Hello (world) there", "Hello ,world, there。"),
        ("（注意）好", ",注意,好。"),
        ("**Bold** and _it_ `code` ~x~ a\\b", "Bold and it code x ab。"),
        ("line\nbreak\ttab.", "linebreaktab."),
        ("Done.", "Done."),
        ("Is it?", "Is it?"),
        ("好的！", "好的！"),
        ("Hello,", "Hello。"),
        ("你好，", "你好。"),
        ("Note:", "Note。"),
        ("你好、世界", "你好，世界。"),
        ("Wait.  Then go", "Wait.Then go。"),
        ("  \n ", ""),
    ],
)
def test_post_process(raw: str, clean: str) -> None:
    assert post_process(raw) == clean


def test_post_process_turns_list_numbers_into_colons() -> None:
    assert post_process("Step 2. Bake") == "Step 2:Bake。"
    assert post_process("价格 1. 苹果") == "价格 1：苹果。"
    assert post_process("Pi is 3.14") == "Pi is 3.14。"
