"""Token layouts of a conversation exactly as inference builds them (see app/model/turn_parts.py).

The KV stream of a session is
    [<|im_start|>system\\n ROLE]
    + per turn [<|im_end|> \\n<|im_start|>user\\n (25 prompts + audio | text)] [<|im_end|>\\n<|im_start|>assistant\\n answer]
and the `<|im_end|>` that ends an answer is sampled but fed only as the first token of the next
turn. Every piece is tokenised on its own, as the runtime does, so BPE never merges across pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.model.fixtures.tiny import CHAT_TEMPLATE
from app.model.llm.duplex import IM_END, ChatTemplate
from training.domain import SYSTEM_ROLE

TEMPLATE = ChatTemplate.parse(CHAT_TEMPLATE)
IGNORE = -100


@dataclass
class Pieces:
    """Token ids of the fixed pieces, and the tokenizer to encode the rest."""

    tokenizer: object
    system: list[int]
    opening: list[int]  # <|im_end|> + "\n<|im_start|>user\n"
    suffix: list[int]  # "<|im_end|>\n<|im_start|>assistant\n"
    im_end: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Pieces:
        encode = lambda text: list(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
        im_end = tokenizer.convert_tokens_to_ids(IM_END)
        assert TEMPLATE.default_role == SYSTEM_ROLE
        return cls(
            tokenizer=tokenizer,
            system=encode(TEMPLATE.system_text(None)),
            opening=[im_end, *encode(TEMPLATE.user_prefix)],
            suffix=encode(TEMPLATE.assistant_suffix),
            im_end=im_end,
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def text_dialog(pieces: Pieces, turns: list[tuple[str, str, int | None]]) -> tuple[list[int], list[int]]:
    """Ids and targets of a typed conversation.

    Each turn is (question, answer, cut): `cut` None means the answer was spoken to the end (its
    tokens and the closing <|im_end|> are targets); an int keeps only the first `cut` answer tokens
    in the history, untrained, as after a barge-in. Targets are aligned with ids (IGNORE elsewhere):
    position i's target is the token at i + 1.
    """
    ids = list(pieces.system)
    wanted = [False] * len(ids)
    for question, answer, cut in turns:
        head = pieces.opening + pieces.encode(question) + pieces.suffix
        ids += head
        wanted += [False] * len(head)
        answer_ids = pieces.encode(answer)
        if cut is None:
            ids += answer_ids + [pieces.im_end]
            wanted += [True] * (len(answer_ids) + 1)
        else:
            ids += answer_ids[:cut]
            wanted += [False] * len(answer_ids[:cut])
    targets = [ids[i + 1] if wanted[i + 1] else IGNORE for i in range(len(ids) - 1)] + [IGNORE]
    # A closing <|im_end|> is the next turn's first token: it stays a target of the answer.
    return ids, targets
