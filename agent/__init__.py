"""The MLLM side: backends (OpenAI-compatible, local Qwen-VL), grounding, planning, chat and annotation.

It produces layouts and edits files; it reaches the pipeline only through the functions the CLI uses.
"""
