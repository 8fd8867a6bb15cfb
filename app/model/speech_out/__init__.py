"""Speech out: the speech decoder (LLM2TTS), where answer text is cut into segments, the codec
and its streaming, seam-smoothed decoding.
"""
