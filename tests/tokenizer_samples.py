"""Texts for comparing CLIP tokenizers: hand-picked hard cases, seeded random texts, ImageNet prompts
and every Unicode code point.  Shared by tests/test_tokenizer.py and bench/bench_tokenizer.py."""

from __future__ import annotations

import random
import string

CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "’s", "’t", "'S", "'LL", "'ſ", "'ſt"]
ENTITIES = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;", "&nbsp;", "&eacute;", "&amp;amp;",
            "&amp;lt;b&amp;gt;", "&copy;", "&hellip;", "&#8217;", "&#128512;", "&ampx", "&notit;", "&#0;",
            "&#xD800;", "&", "&;"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\v", "\f", "\xa0", "\u2000", "\u2009", "\u200a", "\u2028", "\u2029",
          "\u202f", "\u205f", "\u3000", "\u1680", "\x85", "\x1c", "\x1f", "\u180e"]
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e", "\u200f", "\u202e", "\u2066"]
PUNCTUATION = ["!", "!!!", "?!", "...", "…", "--", "—", "–", "-", ",", ";", ":", "(", ")", "[]", "{}", "«»", "“",
               "”", "‘", "'", "''", '"', "/", "\\", "|", "@", "#", "$", "%", "^", "*", "_", "__", "~", "`", "<",
               ">", "<>", "+=", "。", "、", "！", "？", "¿", "¡", "§", "©", "®", "™", "°", "•", "·", "†", "‰", "€", "£",
               "¥", "₹"]
NUMBERS = ["0", "7", "42", "1234567890", "3.14", "1,000", "1e-9", "-5", "½", "²", "³", "Ⅻ", "ⅻ", "٣", "१२३", "１２３",
           "①", "⑳", "𝟘𝟙", "0x1F", "10%", "$5.99", "2nd", "3rd", "21st", "1990s"]
WORDS = ["a", "photo", "of", "the", "wonton", "dumpling", "Shanghai", "DOG", "Cat", "iPhone", "naïve", "café",
         "résumé", "coöperate", "Zürich", "straße", "STRASSE", "ẞ", "İstanbul", "ıi", "ΟΔΟΣ", "Σίσυφος", "ǅungla",
         "ĳssel", "Ǆ", "ﬁne", "ﬀ", "ﬆ", "Kelvin\u212a", "Å\u212b", "\u2126hm", "e\u0301", "a\u0308\u0301",
         "n\u0303", "Z\u0335\u0336", "q\u0345", "\u0345", "ι", "ͅ", "ᾳ", "ᾼ", "ǰ", "ŉ", "ﬓ", "cafÃ©", "Ã¼ber",
         "â€™", "ｆｕｌｌ", "ＷＩＤＴＨ", "ｶﾀｶﾅ", "小笼包", "的照片", "東京", "日本語", "ひらがな", "カタカナ", "한국어", "조선말", "中文字", "𠀋𡈽",
         "\U00031350", "عربي", "السلام", "עברית", "שָׁלוֹם", "فارسی", "हिन्दी", "ਪੰਜਾਬੀ", "தமிழ்", "ไทย", "ລາວ",
         "ქართული", "Հայերեն", "русский", "ЁЖИК", "ελληνικά", "ᚠᚢᚦ", "ⰀⰁ", "𐐀𐐨", "\U00011f04\U00011f05",
         "\U00010d50\U00010d70", "\U0001e4d0", "Ⓐⓑ", "🄰", "🅰", "ℌ𝔢𝔩𝔩𝔬", "𝐛𝐨𝐥𝐝", "x²", "H₂O", "µm", "Å", "ångström",
         "ǈ", "ǋ", "ǲ", "<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "<start_of_text", "start_of_text>",
         "<unk>", "</w>", "word</w>", "🥟", "😀", "👍🏽", "👩‍👩‍👧", "🏳️‍🌈", "🇯🇵", "❤️", "✌︎", "🫠", "\U0001fae8", "©️",
         "1️⃣", "#️⃣", "☃", "♀", "⚧", "\x00", "\x07", "\x1b[31m", "\x7f", "\x9b", "\ud7ff", "\ue000", "\uf8ff",
         "\ufffd", "\uffff", "\U0010ffff", "\U000e0041", "\U000e007f", "a\u034fb", "\u115f", "\u3164", "\u2800",
         "\u0600", "\u061c", "\u0f0c", "\u3002"]

HARD_CASES = [
    "", " ", "   ", "\n\t ", ".", "'", "''", "'s", "s'", "it's", "IT'S", "it’s", "I'll've", "we'd've", "y'all",
    "'twas", "rock 'n' roll", "o'clock", "don't won't can't shan't",
    "he's she's it's they're we've I'm you'll he'd", "'s's's's", "''s", "'''s", "x'ſ 'ſ 'ſt",
    "a photo of a wonton.", "Shanghai   dumpling", "小笼包 的照片", "a &amp; cat's toy!!", "naïve café",
    "A <start_of_text> b", "x!<start_of_text>y", "!<end_of_text>", "a<end_of_text>", "1<end_of_text>2",
    "'s<start_of_text>", "'<start_of_text>", "<<start_of_text>>", "<start_of_text><end_of_text>", "<START_OF_TEXT>",
    "&lt;start_of_text&gt;", "<start_of_text>" * 40, "emoji 🥟 test", "1234 numbers", "3.14159265358979323846",
    "2024-01-01T00:00:00Z", "+1 (555) 010-9999", "e=mc²", "½ cup", "x" * 300, "a" * 1000, " ".join(["word"] * 100),
    "🥟" * 80, "小笼包" * 40, ("a photo of a dog. " * 30).strip(),
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
    "?!?!... ---- ((([[[{{{ }}}]]])))", "....", "…", "a.b.c.d", "a,b;c:d", "e-mail", "well-known", "rock&roll",
    "tab\tseparated\tvalues", "line\nbreak", "crlf\r\nline", "nbsp\xa0space", "zero\u200bwidth", "zwj\u200dhere",
    "bom\ufeffhere", "soft\u00adhyphen", "ideo\u3000space", "thin\u2009space", "  leading and trailing  ", "\u200b",
    "\u200b\u200b", "\xa0", "\u3000", "\x1c\x1d\x1e\x1f", "ΟΔΟΣ ΟΔΟΣ.", "ΣΑΣ", "Σ", "İİ", "İstanbul", "ıI",
    "straße STRASSE ẞ", "Kelvin \u212a", "\u2126", "ǅ ǈ ǋ ǲ", "ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ", "ｆｕｌｌ ｗｉｄｔｈ", "ＡＢＣ１２３",
    "cafÃ© Ã¼ber â€™", "Ã", "e\u0301", "\u0301", "a\u0300\u0301\u0302\u0303", "Z̵̡̢͇̓a̶l̷g̸o̵",
    "ᾳ ᾼ \u0345 q\u0345", "مرحبا بالعالم", "שלום עולם", "abc \u202eRTL override\u202c def", "\u200fhello\u200e",
    "עברית and English", "हिन्दी", "தமிழ்", "ไทยภาษา", "한국어 텍스트", "ひらがなカタカナ漢字", "𠀋𡈽𡌛", "👩‍👩‍👧‍👦 🏳️‍🌈 🇯🇵 👍🏽 1️⃣",
    "&amp;", "&amp;amp;", "&amp;amp;amp;", "&lt;b&gt;bold&lt;/b&gt;", "&#39;s", "&#x27;s", "&nbsp;&nbsp;",
    "&eacute;", "AT&T", "&ampx", "&notit;", "&#0;", "&#xD800;", "&#128512;", "Tom &amp; Jerry's", "<b>html</b>",
    "<p>&amp;</p>", "\x00null", "\x07bell", "\x1b[31mred\x1b[0m", "del\x7f", "\x9b", "\ud7ff\ue000\uf8ff", "\ufffd",
    "\uffff", "\U0010ffff", "\U000e0041\U000e007f", "\U00011f04\U00011f05 \U00010d50", "\U0001e4d0", "\U00031350",
    "a\U000323b0b", "x\ua7ce y", "1\U00011de02",  # letters and a digit newer than Python 3.11's Unicode 14
]


def imagenet_prompts(labels: int | None = None, seed: int = 0) -> list[str]:
    """The 80 ImageNet templates filled with ImageNet class names (all 1000, or `labels` drawn at random)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from clipcli.templates import load_template_set

    names = list(IMAGENET_CLASSNAMES)
    if labels is not None:
        names = random.Random(seed).sample(names, labels)
    templates = load_template_set("imagenet")
    return [prompt for name in names for prompt in templates.render(name)]


def _piece(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:
        word = rng.choice(WORDS)
        return word.upper() if rng.random() < 0.1 else word.title() if rng.random() < 0.1 else word
    if kind < 0.45:
        return rng.choice(PUNCTUATION) * rng.choice((1, 1, 1, 2, 3))
    if kind < 0.55:
        return rng.choice(NUMBERS)
    if kind < 0.63:
        return rng.choice(CONTRACTIONS)
    if kind < 0.70:
        return rng.choice(ENTITIES)
    if kind < 0.76:
        return rng.choice(ZERO_WIDTH)
    if kind < 0.88:  # random code points: Latin-1 and friends, any BMP, anywhere (surrogates aside)
        top = rng.choice((0x250, 0x3000, 0xFFFF, 0x10FFFF))
        chars = []
        while len(chars) < rng.randint(1, 4):
            c = rng.randint(0, top)
            if not 0xD800 <= c <= 0xDFFF:
                chars.append(chr(c))
        return "".join(chars)
    return "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(1, 12)))


def random_texts(count: int, seed: int = 0) -> list[str]:
    """`count` texts of 0-40 pieces (words, punctuation, numbers, contractions, entities, zero-width characters,
    random code points) glued with odd whitespace or nothing; one in twenty is long enough to be cut."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        pieces = rng.randint(60, 200) if rng.random() < 0.05 else rng.randint(0, 40)
        parts = []
        for _ in range(pieces):
            parts.append(_piece(rng))
            glue = rng.random()
            parts.append(" " if glue < 0.55 else "" if glue < 0.8 else rng.choice(SPACES) * rng.randint(1, 3))
        texts.append("".join(parts))
    return texts


def every_code_point(per_text: int = 16, step: int = 1) -> list[str]:
    """Every Unicode scalar value (every `step`-th), `per_text` to a text, each alone, after a letter, after an
    apostrophe, between digits and doubled: '{c} a{c}b '{c} 1{c}2 {c}{c}'."""
    points = [chr(c) for c in range(0, 0x110000, step) if not 0xD800 <= c <= 0xDFFF]
    return [" ".join(f"{c} a{c}b '{c} 1{c}2 {c}{c}" for c in points[i:i + per_text])
            for i in range(0, len(points), per_text)]
