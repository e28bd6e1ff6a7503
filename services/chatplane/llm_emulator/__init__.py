"""A local emulator of the Anthropic Messages and OpenAI chat-completions streaming APIs, for
tests and benchmarks through the real SDKs' `base_url` (docs/llm.md)."""
