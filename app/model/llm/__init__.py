"""The LLM runtime: our lean Qwen2 forward, its caller-owned slot KV cache, the shared Llama-family
layers, sampling, and the duplex rules (chat template pieces, state decisions).
"""
