"""The paper's baseline labels: one manual colour class per tag.

EMIT compares its multi-label embedding against a single-class classifier over manually
defined colour classes. This lexicon is that manual step: Chinese colour words mapped to a
small set of basic colours. A tag takes the class of the longest colour word it contains
(so 藏青 wins over 青 and 米白 over 白); a tag with no colour word is ``other``.
"""

from __future__ import annotations

# Longest words are tried first, so compound colours can override their parts.
COLOUR_WORDS: dict[str, str] = {
    "黑": "black", "乌": "black",
    "白": "white", "米白": "white", "奶白": "white", "本白": "white",
    "灰": "grey", "炭灰": "grey", "银灰": "grey", "烟灰": "grey",
    "银": "silver", "钢": "silver",
    "红": "red", "大红": "red", "枣红": "maroon", "酒红": "maroon", "玫红": "pink",
    "粉": "pink", "粉红": "pink", "桃": "pink", "肉": "beige", "裸": "beige",
    "橙": "orange", "橘": "orange", "桔": "orange",
    "黄": "yellow", "姜黄": "yellow", "金": "gold",
    "绿": "green", "墨绿": "green", "军绿": "olive", "橄榄": "olive", "橄榄绿": "olive",
    "蓝": "blue", "浅蓝": "blue", "天蓝": "blue", "宝蓝": "blue", "湖蓝": "blue",
    "蓝绿": "teal", "青": "teal", "藏青": "navy", "藏蓝": "navy", "深蓝": "navy", "丈青": "navy",
    "紫": "purple", "浅紫": "purple", "薰衣草": "purple",
    "棕": "brown", "咖": "brown", "咖啡": "brown", "褐": "brown", "驼": "brown", "焦糖": "brown",
    "古铜": "brown", "铜": "brown", "巧克力": "brown",
    "米": "beige", "杏": "beige", "卡其": "khaki", "奶": "beige", "燕麦": "beige",
    "多色": "multi", "彩": "multi", "花": "multi",
}
OTHER_COLOUR = "other"
COLOUR_CLASSES: list[str] = [*sorted(set(COLOUR_WORDS.values())), OTHER_COLOUR]
_BY_LENGTH = sorted(COLOUR_WORDS, key=lambda w: (-len(w), w))


def colour_class(tag: str) -> str:
    """The single manual colour class of a tag (the longest colour word it contains)."""
    for word in _BY_LENGTH:
        if word in tag:
            return COLOUR_WORDS[word]
    return OTHER_COLOUR


def colour_index(tag: str) -> int:
    return COLOUR_CLASSES.index(colour_class(tag))
