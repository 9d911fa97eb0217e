"""Clients of language-model endpoints (OpenAI-compatible chat APIs) used to prepare prompts."""
