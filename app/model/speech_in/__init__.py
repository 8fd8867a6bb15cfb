"""Speech in: fbank front end, CMVN, the streaming encoder, the adapter, and the audio LLM
module that holds them with the prompt embeddings and the state head (`audiollm/final.pt`).
"""
