"""Everything `audiollm/final.pt` holds: speech encoder, adapter, prompt embeddings and state head.

Attribute names are the published ones (`adpter` with its typo, `predictor_head`, ...) so the
state dict keys match the checkpoint exactly. The frozen LLM is not part of this file; it comes
from its own Hugging Face folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.model.speech_in.adapter import AdapterConfig, ConvAdapter
from app.model.speech_in.encoder import EncoderConfig, EncoderState, SpeechEncoder


@dataclass(frozen=True)
class AudioLLMConfig:
    """The parts of train.yaml that shape `audiollm/final.pt`."""

    encoder: EncoderConfig
    adapter: AdapterConfig
    prompt_num: int
    task_num: int
    num_states: int
    chat_template: str
    eod_id: int | None

    @classmethod
    def from_train_yaml(cls, cfg: dict[str, Any]) -> AudioLLMConfig:
        model_conf = cfg["model_conf"]
        if not model_conf.get("add_prompt_before", True):
            raise ValueError("only add_prompt_before: true (prompts before the audio) is supported")
        return cls(
            encoder=EncoderConfig.from_train_yaml(cfg),
            adapter=AdapterConfig.from_train_yaml(cfg),
            prompt_num=int(model_conf["prompt_num"]),
            task_num=int(model_conf.get("task_num", 0)),
            num_states=int(model_conf["predict_usr_state"]),
            chat_template=str(model_conf["chat_template"]),
            eod_id=(cfg.get("dataset_conf", {}).get("tokenize_conf", {}) or {}).get("eod_id"),
        )

    def to_train_yaml(self) -> dict[str, Any]:
        """A train.yaml in the published shape (training-only keys included with their values)."""
        encoder = self.encoder.to_train_yaml_fragment()
        adapter = self.adapter.to_train_yaml_fragment()
        model_conf = {
            **adapter["model_conf"],
            "add_audio_bos_eos": True,
            "add_prompt_before": True,
            "chat_template": self.chat_template,
            "chunk_size": 2,
            "freeze_adpter": True,
            "freeze_encoder": True,
            "freeze_llm": True,
            "llm_head_num": 0,
            "llm_path": "",
            "num_key_value_heads": 0,
            "predict_usr_state": self.num_states,
            "prompt_finetune": True,
            "prompt_num": self.prompt_num,
            "task_num": self.task_num,
            "task_type": "prompt_finetune",
        }
        return {
            **{k: v for k, v in encoder.items() if k != "model_conf"},
            "cmvn_file": "",
            "is_json_cmvn": True,
            "dataset_conf": {"tokenize_conf": {"eod_id": self.eod_id}, "tokenize_type": "Qwen"},
            "model_conf": model_conf,
        }


class AudioLLM(nn.Module):
    """Encoder, adapter, prompt embeddings, the unused task table and the duplex state head."""

    def __init__(self, config: AudioLLMConfig, llm_hidden: int) -> None:
        super().__init__()
        if config.adapter.llm_embed_dim != llm_hidden:
            raise ValueError(
                f"train.yaml llm_embed_dim {config.adapter.llm_embed_dim} does not match the LLM's "
                f"hidden size {llm_hidden}: --llm-path points at a different model family"
            )
        self.config = config
        self.encoder = SpeechEncoder(config.encoder)
        self.adpter = ConvAdapter(config.adapter)
        self.prompt_embeddings = nn.Embedding(config.prompt_num, llm_hidden)
        self.task_embeddings = nn.Embedding(max(config.task_num, 1), llm_hidden)
        self.predictor_head = nn.Linear(llm_hidden, config.num_states)

    @torch.inference_mode()
    def encode_chunks(
        self,
        feats: torch.Tensor,
        encoder_states: list[EncoderState],
        adapter_caches: list[torch.Tensor | None],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 19, 80) fbank of one chunk per session -> (B, 2, llm_hidden) LLM input vectors."""
        encoded = self.encoder.forward_chunks(feats, encoder_states)
        return self.adpter.forward_chunks(encoded, adapter_caches)

    def state_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Post-norm last hidden state(s) -> the 4 state logits, fp32."""
        return self.predictor_head(hidden).float()
