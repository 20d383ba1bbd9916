"""The prompt template: one source of truth for data preparation and the data module."""

from __future__ import annotations

# The model must answer in Vietnamese, reason in <think>, give a short answer in <answer> and a
# one-sentence explanation in <explain>. `{question}` is filled in per sample.
DEFAULT_PROMPT_TEMPLATE = (
    "{question}\n"
    "Hãy trả lời bằng tiếng Việt. Suy nghĩ từng bước trong thẻ <think> </think>, "
    "đưa ra câu trả lời ngắn gọn (một từ hoặc một cụm từ) trong thẻ <answer> </answer>, "
    "rồi giải thích bằng một câu trong thẻ <explain> </explain>."
)


def render_prompt(template: str, question: str) -> str:
    """Fill ``{question}`` into a template; a template without it is refused (every sample would look the same)."""
    if "{question}" not in template:
        raise ValueError("The prompt template must contain '{question}', where each sample's question goes.")
    return template.replace("{question}", question)
