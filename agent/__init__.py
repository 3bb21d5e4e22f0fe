"""MLLM backends that turn requests and images into layouts (not implemented yet)."""
