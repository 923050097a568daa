#!/usr/bin/env python3
"""Writes core/tests/data/clip_tokens.json: CLIP token ids of about 3,100 strings from the
reference tokenisers, for core/tests/tokenizer_equivalence.rs.

The reference is Hugging Face's CLIPTokenizerFast, which CLIPProcessor gives by default
("hf": its ids with truncation=True, max_length=77). Where pg_vision must give other ids,
the fixture has them ("pgv": CLIPTokenizerFast, special-token strings taken as text, on the
text after pg_vision's clean-up, `preclean` below) and the clean-up rules that changed the
text ("why"). It also has OpenAI's SimpleTokenizer's ids (clip.tokenize, truncate=True)
where they differ from pg_vision's, and counts, in its header, the strings on which each
of these differs from CLIPTokenizerFast: pgv, OpenAI's, transformers' Python CLIPTokenizer
with ftfy installed ("slow") and without ("slow_noftfy", its BERT BasicTokenizer fallback).

The strings (fixed lists and a seeded random generator): search queries, product titles
and descriptions, punctuation, accents (precomposed and decomposed), emoji (ZWJ sequences,
skin tones, flags), CJK, Arabic, Hebrew, Cyrillic, Thai and more scripts, HTML entities
(malformed ones too), whitespace and invisible characters, texts far over 77 tokens,
special-token strings, numbers and units, repeated characters, mojibake and control
characters, and random mixtures of all of these.

Nothing is downloaded. The vocabulary is built here from CLIP's BPE merges file as shipped in
the open_clip_torch package (bpe_simple_vocab_16e6.txt.gz), the way OpenAI and Hugging Face
derive it: the 256 byte tokens, the same with </w>, one token per merge for the first
49152-256-2 merges, then <|startoftext|> and <|endoftext|> (49408 ids). Known CLIP ids are
checked before anything is written.

OpenAI's SimpleTokenizer is open_clip's copy of it (open_clip/tokenizer.py), loaded as a
lone module file with a stand-in for `torch`, which the module imports only for its
batch output. open_clip's copy departs from OpenAI's clip/simple_tokenizer.py in two
places, put back here: the special tokens are spelled <start_of_text>/<end_of_text> (OpenAI:
<|startoftext|>/<|endoftext|>), and whitespace_clean uses str.split() (OpenAI:
regex.sub(r"\\s+", " ")).

Deterministic: a fixed seed and fixed lists; the same package versions give the same file.
Usage (the packages are pinned in scripts/requirements-tokenizer.txt, installed without
their dependencies, so open_clip_torch comes without torch):
  python3 -m venv .pgv/tokenizer-venv
  .pgv/tokenizer-venv/bin/pip install --no-deps -r scripts/requirements-tokenizer.txt
  .pgv/tokenizer-venv/bin/python scripts/tokenizer_fixture.py [--out FILE | --check FILE]
--check FILE writes nothing: it compares this environment's CLIPTokenizerFast with FILE's hf
and pgv ids (for another transformers version: in 5.x CLIPTokenizer is the fast one), and
fails if a string without a special-token spelling differs.
"""

import argparse
import gzip
import html
import importlib.util
import json
import os
import random
import sys
import tempfile
import types
import unicodedata

import regex

SEED = 20260612
CONTEXT = 77
SOT, EOT = 49406, 49407
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "core", "tests", "data", "clip_tokens.json")
WHITE_SPACE = regex.compile(r"\p{White_Space}")


# --- the vocabulary --------------------------------------------------------------------


def bytes_to_unicode():
    """OpenAI's byte -> printable character table (the first 256 tokens, in id order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def open_clip_dir():
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        sys.exit("open_clip_torch is not installed (see the usage at the top of this file)")
    return spec.submodule_search_locations[0]


def write_vocab(bpe_gz, folder):
    """vocab.json and merges.txt as Hugging Face's CLIP repositories have them."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # line 0 is a version comment
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 == len(set(vocab)), len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


# --- the tokenisers --------------------------------------------------------------------


def hf_tokenizers(folder):
    """{name: callable(text) -> ids} for transformers' fast and slow CLIP tokenisers."""
    import transformers
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    def load(cls, **kwargs):
        return cls.from_pretrained(folder, local_files_only=True, **kwargs)

    out = {"hf": truncating(load(CLIPTokenizerFast))}
    # The same with special-token strings in the text taken as text (pg_vision's rule).
    out["hf_split"] = truncating(load(CLIPTokenizerFast, split_special_tokens=True))
    # transformers 5 has only the tokenizers-backed class, under both names.
    if CLIPTokenizer is not CLIPTokenizerFast:
        slow = load(CLIPTokenizer)
        assert slow.fix_text is not None, "ftfy is not installed"
        out["slow"] = truncating(slow)
        # What the slow tokeniser does when ftfy cannot be imported.
        from transformers.models.clip.tokenization_clip import BasicTokenizer

        basic = load(CLIPTokenizer)
        basic.fix_text = None
        basic.nlp = BasicTokenizer(strip_accents=False, do_split_on_punc=False)
        out["slow_noftfy"] = truncating(basic)
    return out, transformers.__version__


def truncating(tokenizer):
    """`tokenizer(text, truncation=True, max_length=77)`, checked against the rule pg_vision
    follows: SOT, the first 75 text tokens of the whole encoding, EOT."""

    def ids(text):
        cut = tokenizer(text, truncation=True, max_length=CONTEXT)["input_ids"]
        whole = tokenizer(text)["input_ids"]
        assert cut == (whole if len(whole) <= CONTEXT else whole[: CONTEXT - 1] + [EOT]), text
        return cut

    return ids


def load_module_without_torch(name, path):
    """Executes a module file that imports torch only for tensors it returns, with a stand-in
    `torch` in sys.modules during the import (transformers must be imported before: it
    probes for torch and would find the stand-in)."""
    stub = types.ModuleType("torch")
    stub.__getattr__ = lambda attr: object  # torch.Tensor etc. appear in annotations only
    saved = sys.modules.get("torch")
    sys.modules["torch"] = stub
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["torch"]
        else:
            sys.modules["torch"] = saved
    return module


def openai_tokenizer(package_dir):
    """OpenAI's SimpleTokenizer, from open_clip's copy with its two departures put back."""
    module = load_module_without_torch("openai_simple_tokenizer", os.path.join(package_dir, "tokenizer.py"))
    # OpenAI: `re.sub(r'\s+', ' ', text).strip()` (regex module: \s is Unicode White_Space,
    # which, unlike str.split(), excludes U+001C..U+001F).
    module.whitespace_clean = lambda text: regex.sub(r"\s+", " ", text).strip()
    tok = module.SimpleTokenizer()
    for old, new in (("<start_of_text>", "<|startoftext|>"), ("<end_of_text>", "<|endoftext|>")):
        tok.encoder[new] = tok.encoder.pop(old)
        tok.cache.pop(old)
        tok.cache[new] = new
    tok.decoder = {v: k for k, v in tok.encoder.items()}
    tok.pat = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )

    def ids(text):
        # clip.tokenize(text, context_length=77, truncate=True)
        tokens = [SOT] + tok.encode(text) + [EOT]
        if len(tokens) > CONTEXT:
            tokens = tokens[:CONTEXT]
            tokens[-1] = EOT
        return tokens

    return ids


def check_known_ids(tokenizers):
    known = {
        "a photo of a cat": [SOT, 320, 1125, 539, 320, 2368, EOT],
        "a photo of a dog": [SOT, 320, 1125, 539, 320, 1929, EOT],
        "Hi there": [SOT, 1883, 997, EOT],
        "How are you?": [SOT, 829, 631, 592, 286, EOT],
        "A person riding a motorcycle": [SOT, 320, 2533, 6765, 320, 10297, EOT],
    }
    for name, tokenize in tokenizers.items():
        for text, want in known.items():
            got = tokenize(text)
            assert got == want, f"{name}({text!r}) = {got}, CLIP's ids are {want}"


# --- pg_vision's clean-up, the one deliberate departure from CLIPTokenizerFast -------------

QUOTES = {**{c: "'" for c in "\u2018\u2019\u201a\u201b\u02bc"}, **{c: '"' for c in "\u201c\u201d\u201e\u201f"}}
LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "\u017ft",
             "\ufb06": "st", "\u0132": "IJ", "\u0133": "ij"}
INVISIBLE = {"\ufeff", *map(chr, range(0x206A, 0x2070)), *map(chr, range(0xFFF9, 0xFFFD))}


def char_rule(c):
    """(rule, replacement) of core/src/tokenize.rs's `fix_chars` for one NFC character."""
    if c in QUOTES:
        return "quotes", QUOTES[c]
    if c in LIGATURES:
        return "ligatures", LIGATURES[c]
    if "\uff01" <= c <= "\uff5e":
        return "width", chr(ord(c) - 0xFF01 + 0x21)
    if c in INVISIBLE:
        return "invisible", ""
    if unicodedata.category(c) == "Cc" and not WHITE_SPACE.match(c):
        return "controls", ""
    return None, c


def preclean(text):
    """The text pg_vision hands to CLIP's tokenisation, and the names of the rules that changed
    it: core/src/tokenize.rs's `clean_text` before its whitespace collapse (CLIPTokenizerFast
    collapses whitespace itself). Taken from OpenAI's `basic_clean` (its `ftfy.fix_text`, in
    part, then `html.unescape` twice), which CLIPTokenizerFast does not do."""
    rules, out = set(), []
    for c in unicodedata.normalize("NFC", text):
        rule, fixed = char_rule(c)
        if rule:
            rules.add(rule)
        out.append(fixed)
    fixed = "".join(out)
    unescaped = html.unescape(html.unescape(fixed))
    if unescaped != fixed:
        rules.add("html")
    return unescaped, rules


# --- the strings -----------------------------------------------------------------------

COLOURS = ["navy", "black", "off-white", "heather grey", "Burgundy", "olive", "sand", "RED", "dusty pink", "écru",
           "Bleu Marine", "teal/blue", "multi-colour", "camel", "charcoal", "ivory"]
FITS = ["slim-fit", "regular fit", "Relaxed-Fit", "oversized", "skinny", "straight leg", "tapered", "A-line", "wide-leg",
        "cropped", "high-rise", "boxy"]
GARMENTS = ["chino", "T-shirt", "hoodie", "jeans", "blazer", "sneakers", "maxi dress", "trench coat", "cardigan",
            "polo shirt", "ankle boots", "parka", "joggers", "bikini top", "crossbody bag", "beanie", "loafers",
            "sweatshirt", "puffer jacket", "midi skirt", "tote", "sunglasses", "backpack", "chelsea boots"]
WHO = ["Men's", "Women's", "Kids'", "Unisex", "Girls’", "Boys’", "Women’s", "MEN'S", "Baby", "Teen"]
MATERIALS = ["100% cotton", "organic cotton", "merino wool", "vegan leather", "linen blend", "recycled polyester",
             "suede", "denim", "cashmere", "silk", "nylon/elastane", "faux fur", "Gore-Tex®", "TENCEL™ lyocell"]
BRANDS = ["H&M", "Levi's®", "Zara", "Nike™", "adidas Originals", "Uniqlo U", "Carhartt WIP", "Björn Borg", "Mango",
          "Dr. Martens", "Tommy Hilfiger", "COS", "& Other Stories", "A.P.C.", "Acne Studios", "Ganni", "Salomon",
          "L'Oréal", "Hermès", "Saint Laurent", "Moncler", "Stüssy", "Patagonia®", "Muji 無印良品", "ユニクロ"]
SIZES = ['32"x34"', "W32 L34", "XS", "S/M", "L-XL", "XXL", "3XL", "EU 42", "US 10.5", "UK 8", "size 38", "28W x 30L",
         "0-3 months", "12–18 mo", "one size", "5'11\"", "165/88A", "36B", "7 ½", "10.5", "44 2/3", "M (38-40)"]
PRICES = ["$49.99", "€1.299,00", "£15", "¥12,800", "₹2,499", "19,95 €", "USD 120", "-30%", "2 for $30", "Was $80, now $56",
          "CHF 89.–", "₩39,000", "R$ 199,90", "zł 129"]
UNITS = ["500 ml", "1.5L", "250g", "2 kg", "16 oz", "3.4 fl. oz.", "10 cm", "5 mm", "1/2\"", "6ft", "60 x 90 cm",
         "100 m²", "5 °C", "-20°F", "220–240 V", "4K", "1080p", "2.4 GHz", "5000mAh", "65W", "10 000 mAh", "½ cup",
         "3×4", "IP68", "Ø 40 mm", "24\" × 36\"", "12-pack", "No. 5", "#1 best seller", "Nº 7"]
DESC_SENTENCES = [
    "Cut from soft organic cotton for everyday comfort.",
    "Features a relaxed fit, dropped shoulders & ribbed cuffs.",
    "Machine wash cold; tumble dry low. Do NOT bleach!",
    "Model is 6'1\" (185 cm) and wears a size M.",
    "Our best-selling jeans — now in a 'lived-in' wash.",
    "Made in Portugal 🇵🇹 from recycled materials (≥ 50%).",
    "Water-repellent finish keeps you dry in light rain.",
    "Pair it with white sneakers for an easy weekend look.",
    "Limited edition: only 500 pieces worldwide!!!",
    "The fabric is pre-shrunk, so it won't lose its shape.",
    "Free returns within 30 days. See details @ checkout.",
    "Adjustable straps + hidden pocket = all-day comfort.",
    "Note: colours may vary slightly from the images shown.",
    "Lightweight, breathable & quick-drying: perfect for travel ✈️.",
    "Hand-finished by artisans in Oaxaca, México.",
    "Please allow 3–5 business days for delivery.",
    "Ce pull en laine mérinos est doux, chaud et léger.",
    "Dieses Kleid ist aus reiner Seide gefertigt und äußerst bequem.",
    "Esta chaqueta impermeable es ideal para el otoño.",
    "Questa borsa è realizzata in pelle italiana di alta qualità.",
    "このシャツは綿100%で、洗濯機で洗えます。",
    "这款连衣裙采用轻盈的雪纺面料，适合夏季穿着。",
    "이 재킷은 방수 기능이 있어 비 오는 날에도 좋습니다.",
    "Эта куртка сшита из натуральной кожи высшего качества.",
    "هذا القميص مصنوع من القطن المصري الفاخر.",
    "החולצה עשויה מכותנה אורגנית רכה.",
    "เสื้อตัวนี้ทำจากผ้าฝ้ายคุณภาพดี ใส่สบาย",
    "यह कुर्ता शुद्ध सूती कपड़े से बना है।",
    "Το φόρεμα είναι φτιαγμένο από ΜΕΤΑΞΙ.",
]

SCRIPTS = {
    "cjk": ["红色连衣裙", "男士运动鞋 黑色", "牛仔裤 修身", "羽绒服女 长款", "手提包", "Tシャツ メンズ 白", "ワンピース 花柄",
            "スニーカー レディース", "かわいい帽子", "가방 여성용", "청바지 남성 슬림핏", "운동화", "漢字とカタカナとひらがな",
            "中文English混合", "iPhone 15 手机壳", "ｶﾀｶﾅ半角", "〈限定〉《新品》「セール」【送料無料】"],
    "arabic": ["فستان أحمر", "حذاء رياضي للرجال", "قميص قطني أبيض", "حقيبة يد جلدية", "عباية سوداء مطرزة",
               "ساعة ذكية ٤٤ مم", "عطر ١٠٠ مل", "مَلابِس أَطفال", "فستان (مقاس M)"],
    "hebrew": ["שמלה אדומה", "נעלי ספורט לגברים", "חולצת טי לבנה", "תיק עור", "מְעִיל חֹרֶף", "ג'ינס כחול 32"],
    "cyrillic": ["Красное платье", "МУЖСКИЕ КРОССОВКИ", "джинсы скинни", "Пуховик женский длинный", "сумка-шоппер",
                 "Ёлочная игрушка", "Українська вишиванка", "Српска мајица", "Беларуская кашуля", "ЎЗБЕКЧА"],
    "thai": ["ชุดเดรสสีแดง", "รองเท้าผ้าใบผู้ชาย", "กางเกงยีนส์ ขาเดฟ", "กระเป๋าสะพายข้าง", "เสื้อยืด ๑๐๐% ฝ้าย"],
    "greek": ["Κόκκινο φόρεμα", "ΑΘΛΗΤΙΚΑ ΠΑΠΟΥΤΣΙΑ", "ΟΔΟΣ", "ΣΟΦΟΣ ΛΟΓΟΣ", "Σίσυφος", "ὈΔΥΣΣΕΎΣ"],
    "indic": ["लाल पोशाक", "पुरुषों के जूते", "साड़ी रेशमी", "লাল পোশাক", "சிவப்பு உடை", "ఎరుపు దుస్తులు", "ਲਾਲ ਪਹਿਰਾਵਾ"],
    "other": ["Կարմիր զգեստ", "წითელი კაბა", "ቀይ ቀሚስ", "ສີແດງ", "ក្រហម", "ꯂꯩꯁꯣꯟ", "𝐁𝐨𝐥𝐝 𝐦𝐚𝐭𝐡 𝐭𝐞𝐱𝐭",
              "𝔉𝔯𝔞𝔨𝔱𝔲𝔯", "ⓒⓘⓡⓒⓛⓔⓓ", "🅱🅻🅰🅲🅺", "Ⓐⓑⓒ", "ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ", "ＡＢＣ１２３！？",
              "ꜱᴍᴀʟʟ ᴄᴀᴘꜱ", "ᵘᵖ ˢᶜʳⁱᵖᵗ", "z̷̢a̸l̵g̶o̷ ̸t̵e̷x̶t̸", "Ⅻ Ⅳ ⅷ", "①②③ ⑴⑵", "ℌℑℜ ℝℕℤ", "ﬁne ﬂour ﬀ ﬃ", "Ĳssel ĳs"],
}

EMOJI = ["😀", "😂", "❤️", "❤", "👍", "👍🏻", "👍🏽", "👍🏿", "🔥", "✨", "🇫🇷", "🇺🇸", "🇯🇵", "🏳️‍🌈", "🏴‍☠️",
         "👨‍👩‍👧‍👦", "👩🏽‍💻", "🧑‍🤝‍🧑", "👩‍❤️‍💋‍👨", "🤷‍♀️", "🙋🏾‍♂️", "1️⃣", "#️⃣", "©️", "™️", "☀️",
         "⭐", "🌟", "👗", "👠", "👟", "🧥", "👜", "🕶️", "💍", "⌚", "🛍️", "💯", "🆕", "🔝", "😍😍😍", "🎉🎊",
         "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "👁️‍🗨️", "🫶🏼", "🥹", "😶‍🌫️", "❤️‍🔥", "🐈‍⬛", "🧔🏻‍♀️"]

PUNCT = ["!", "?", ".", ",", ";", ":", "-", "—", "–", "…", "...", "'", '"', "‘", "’", "“", "”", "«", "»", "‹", "›",
         "„", "‚", "(", ")", "[", "]", "{", "}", "<", ">", "/", "\\", "|", "@", "#", "$", "%", "^", "&", "*", "_", "+",
         "=", "~", "`", "¿", "¡", "•", "·", "§", "¶", "†", "‡", "°", "©", "®", "™", "′", "″", "‰", "※", "→", "×",
         "÷", "±", "¬", "´", "ʼ", "‛", "‟", "＂", "＇", "、", "。", "，", "！", "？", "：", "；", "／", "—-", "--",
         "!!", "?!", "!?", "...?", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "’s", "'S", "'LL"]

ENTITIES = ["&amp;", "&amp", "&AMP;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;", "&apos;", "&eacute;", "&Eacute;",
            "&eacute", "&nbsp;", "&nbsp", "&ndash;", "&mdash;", "&hellip;", "&copy;", "&reg;", "&trade;", "&euro;",
            "&pound;", "&yen;", "&deg;", "&frac12;", "&times;", "&rsquo;", "&lsquo;", "&ldquo;", "&rdquo;",
            "&#8217;", "&#x2019;", "&#233;", "&#xE9;", "&#128512;", "&#x1F600;", "&#0;", "&#xD800;", "&#128;",
            "&#150;", "&#x110000;", "&#1;", "&#11;", "&#9;", "&#10;", "&#13;", "&#32;", "&bogus;", "&;", "&#;",
            "&#x;", "&#xZZ;", "&am", "&amp;amp;", "&amp;lt;", "&amp;#39;", "&#38;amp;", "&amp;amp;amp;", "&notit;",
            "&notin;", "&not", "&sup2", "&pound10", "&ampx;", "&Amp;", "&NotEqualTilde;", "&fjlig;", "&zwj;",
            "&zwnj;", "&shy;", "&ensp;", "&emsp;", "&thinsp;", "&ThickSpace;", "&lt&gt", "&#65", "&#x41",
            "&#00000065;", "&#X41;", "&#xFEFF;", "&#x200B;", "&#xfdd0;"]

SPACES = ["\t", "\n", "\r\n", "\r", "\u00a0", "\u2002", "\u2003", "\u2009", "\u200a", "\u202f", "\u205f", "\u3000",
          "\u2028", "\u2029", "\u0085", "\u000b", "\u000c", "\u1680", "\u180e", "\u200b", "\u200c", "\u200d", "\u2060",
          "\ufeff", "\u00ad", "\u001c", "\u001d", "\u001e", "\u001f", "  ", "\t\t", " \n ", "\u00a0\u00a0"]

SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|STARTOFTEXT|>", "<|EndOfText|>", "<start_of_text>", "<end_of_text>",
            "<|startoftext", "startoftext|>", "<||>", "<|pad|>", "<s>", "</s>", "[CLS]", "[SEP]", "<unk>", "</w>"]

MOJIBAKE = ["cafÃ©", "Ã©tÃ©", "donâ€™t", "â€œquotedâ€\x9d", "Ã¼ber", "naÃ¯ve", "â‚¬50", "Ã‰COLE", "SchÃ¶n",
            "Ð\x9fÑ€Ð¸Ð²ÐµÑ‚", "Ã¢â‚¬â„¢", "Â£20", "Â©2024", "Ã±", "Ã\xa0 la carte"]

WORDS = ["dress", "shirt", "shoes", "bag", "red", "blue", "summer", "winter", "sale", "new", "vintage", "classic",
         "leather", "cotton", "floral", "striped", "casual", "formal", "women", "men", "kids", "sport", "running",
         "waterproof", "lightweight", "warm", "cozy", "elegant", "party", "wedding", "office", "beach", "travel",
         "the", "a", "with", "for", "and", "of", "in", "on", "by", "is", "it's", "don't", "we're", "I've", "you'll"]


QUERY_WORDS = ["red", "black", "white", "blue", "green", "pink", "beige", "summer", "winter", "linen", "leather", "wool",
               "floral", "striped", "plaid", "denim", "silk", "knit", "men", "women", "kids", "girls", "boys", "baby",
               "dress", "shirt", "jeans", "shoes", "boots", "sneakers", "sandals", "jacket", "coat", "hoodie", "skirt",
               "shorts", "bag", "backpack", "hat", "scarf", "watch", "sunglasses", "swimsuit", "pajamas", "suit",
               "for", "with", "and", "without", "under", "like", "the", "a", "no", "waterproof", "cheap", "designer",
               "vintage", "oversized", "long", "short", "sleeve", "sleeveless", "v-neck", "crew neck", "high waisted",
               "wedding guest", "office", "running", "hiking", "beach", "party", "gym", "size", "small", "large", "xl",
               "10", "42", "$50", "2024", "new", "sale", "best", "gift", "outfit", "look", "style", "casual", "formal"]


def queries(rng, n):
    """Search-box text, the most common input of embed_text: short, mostly plain."""
    out = []
    for _ in range(n):
        words = [rng.choice(QUERY_WORDS) for _ in range(rng.randint(1, 7))]
        text = " ".join(words)
        r = rng.random()
        if r < 0.15:
            text = text.capitalize()
        elif r < 0.2:
            text += rng.choice(["?", "!", "...", " ?", " pls", " 2 pack", " (men)", " - women"])
        elif r < 0.25 and len(text) > 4:  # a typo: a letter doubled or dropped
            i = rng.randrange(len(text))
            text = text[:i] + (text[i] * 2 if rng.random() < 0.5 else "") + text[i + 1 :]
        out.append(text)
    return out


def products(rng, n):
    out = []
    for _ in range(n):
        parts = [rng.choice(WHO), rng.choice(FITS), rng.choice(GARMENTS)]
        if rng.random() < 0.5:
            parts.insert(0, rng.choice(BRANDS))
        title = " ".join(parts)
        sep = rng.choice([" — ", " - ", ", ", " | ", " – ", " / ", " · ", ": "])
        tail = [rng.choice(COLOURS)]
        if rng.random() < 0.6:
            tail.append(rng.choice(SIZES))
        if rng.random() < 0.4:
            tail.append(rng.choice(MATERIALS))
        if rng.random() < 0.3:
            tail.append(rng.choice(PRICES))
        title += sep + ", ".join(tail)
        out.append(case_variant(rng, title))
    return out


def case_variant(rng, text):
    r = rng.random()
    if r < 0.1:
        return text.upper()
    if r < 0.15:
        return text.lower()
    if r < 0.2:
        return text.title()
    if r < 0.25:
        return "".join(c.upper() if rng.random() < 0.5 else c for c in text)
    return text


def descriptions(rng, n):
    out = []
    for i in range(n):
        k = rng.randint(1, 4) if i % 3 else rng.randint(6, 14)  # a third far over 77 tokens
        text = " ".join(rng.choice(DESC_SENTENCES) for _ in range(k))
        if rng.random() < 0.2:
            text = text.replace("&", rng.choice(["&amp;", "&amp;amp;", "&#38;"]))
        out.append(text)
    return out


def punctuation(rng, n):
    out = ["".join(PUNCT[i : i + 5]) for i in range(0, len(PUNCT), 5)]
    out += [f"{rng.choice(WORDS)}{p}{rng.choice(WORDS)}" for p in PUNCT]
    out += [f"{rng.choice(WORDS)} {p} {rng.choice(WORDS)}" for p in PUNCT]
    while len(out) < n:
        out.append("".join(rng.choice(PUNCT + WORDS + [" "]) for _ in range(rng.randint(1, 12))))
    return out[:n] if len(out) > n else out


ACCENTED = ["café", "crème brûlée", "naïve", "résumé", "Straße", "STRASSE", "Ærø", "smørrebrød", "Łódź", "Ångström",
            "São Paulo", "piñata", "jalapeño", "Zürich", "Köln", "Øresund", "Dvořák", "İstanbul", "ıi", "Iİ", "ǅemal",
            "ǈ ǋ", "ẞ", "ﬀ", "Ǆ", "Ῥόδος", "ΐ", "ǰ", "ŉ", "Ā Ē Ī Ō Ū", "Ệ ệ Ở", "ÀÉÎÕÜ", "Ça va", "Œuvre", "Ÿ",
            "ß", "Σ", "ΣΑΣ", "ﬅ", "Å", "Ω", "K", "Ǳ", "á́", "e\u0301\u0301", "\u0301a", "a\u0308\u0304", "ñ", "Ñ"]


# Text the clean-up leaves decomposed: a mark after an unescaped reference, a removed control
# or a character made ASCII. Hugging Face composes it (NFC) afterwards.
RECOMPOSE = ["cafe&#x301;", "cafe&#769;", "e&#x301;&#x301;", "cafe\x07\u0301", "e\ufeff\u0301", "\uff21\u030a",
             "\uff45\u0301t\uff45\u0301", "&amp;\u0301", "&amp\u0301", "na&iuml;ve cafe&#x0301;", "\u2019\u0301"]


def accents(rng, n):
    out = list(RECOMPOSE)
    for word in ACCENTED:
        out += [word, unicodedata.normalize("NFD", word), word.upper(), unicodedata.normalize("NFKD", word)]
    out = list(dict.fromkeys(out))
    while len(out) < n:
        words = [rng.choice(ACCENTED) for _ in range(rng.randint(2, 5))]
        text = " ".join(words)
        out.append(unicodedata.normalize(rng.choice(["NFC", "NFD"]), text))
    return out[:n]


def emoji(rng, n):
    out = list(EMOJI)
    out += [f"{rng.choice(WORDS)} {e} {rng.choice(WORDS)}" for e in EMOJI]
    out += [f"{rng.choice(WORDS)}{e}" for e in EMOJI]
    while len(out) < n:
        out.append("".join(rng.choice(EMOJI + [" ", "!", rng.choice(WORDS)]) for _ in range(rng.randint(2, 8))))
    return out[:n]


def scripts(rng, n):
    out = [s for group in SCRIPTS.values() for s in group]
    out += list(DESC_SENTENCES[16:])
    pool = [s for group in SCRIPTS.values() for s in group]
    while len(out) < n:
        k = rng.randint(2, 4)
        out.append(" ".join(rng.choice(pool + WORDS) for _ in range(k)))
    return out[:n]


def html_entities(rng, n):
    out = list(ENTITIES)
    out += [f"{rng.choice(WORDS)}{e}{rng.choice(WORDS)}" for e in ENTITIES]
    out += [f"{rng.choice(BRANDS)} {e} {rng.choice(GARMENTS)}" for e in ENTITIES]
    out += ["Men&#39;s slim-fit chino &mdash; navy, 32&quot;x34&quot;", "H&amp;M hoodie &ndash; black",
            "<b>Bold</b> &lt;i&gt;italic&lt;/i&gt;", "caf&eacute; cr&egrave;me br&ucirc;l&eacute;e",
            "&lt;|endoftext|&gt;", "&lt;|startoftext|&gt; dress", "50&percnt; off", "A&amp;B&ampC&amp;amp;D",
            "Tom &amp Jerry", "&&&&", "& & &", "&#x26;amp;", "R&D", "AT&T", "Q&A", "M&Ms", "&copy2024",
            "price&lt;100&amp;&amp;size&gt;M", "&#x1F44D;&#x1F3FD;", "&#55357;&#56832;"]
    while len(out) < n:
        out.append("".join(rng.choice(ENTITIES + WORDS + [" ", "&", ";", "#"]) for _ in range(rng.randint(2, 7))))
    return out[:n]


def whitespace(rng, n):
    out = ["", " ", "   ", "\t", "\n", "\r\n", "\u00a0", "\u200b", "\ufeff", "\u3000", " \t\r\n "]
    out += [f"red{s}dress" for s in SPACES]
    out += [f"{s}red dress{s}" for s in SPACES]
    out += [f"red {s} summer{s}{s}dress" for s in SPACES]
    while len(out) < n:
        parts = [rng.choice(WORDS) for _ in range(rng.randint(1, 5))]
        text = ""
        for p in parts:
            text += rng.choice(SPACES + [" "]) + p
        out.append(text + rng.choice(SPACES + [""]))
    return out[:n]


def long_strings(rng, n):
    out = []
    for i in range(n):
        kind = i % 8
        if kind == 0:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 200))))
        elif kind == 1:
            out.append(rng.choice("abcdefghijklmnopqrstuvwxyz") * rng.randint(100, 600))
        elif kind == 2:
            out.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(200, 800))))
        elif kind == 3:
            out.append(rng.choice(EMOJI) * rng.randint(40, 120))
        elif kind == 4:
            out.append(", ".join(products(rng, rng.randint(6, 12))))
        elif kind == 5:
            out.append(rng.choice(["th", "ha", "😂", "的", "!?", "ab", "lol"]) * rng.randint(100, 400))
        elif kind == 6:
            out.append(" ".join(str(rng.randint(0, 10**6)) for _ in range(rng.randint(30, 80))))
        else:
            out.append("".join(rng.choice(PUNCT) for _ in range(rng.randint(100, 300))))
    return out


def specials(rng, n):
    out = list(SPECIALS)
    out += [f"red {s} dress" for s in SPECIALS]
    out += [f"{s}{s}" for s in SPECIALS[:6]]
    out += ["<|startoftext|>a photo of a cat<|endoftext|>", "a photo<|endoftext|>of a cat", "<|endoftext|>" * 80]
    while len(out) < n:
        out.append(" ".join(rng.choice(SPECIALS + WORDS) for _ in range(rng.randint(2, 6))))
    return out[:n]


def numbers(rng, n):
    out = list(UNITS) + list(SIZES) + list(PRICES)
    out += ["0", "7", "42", "1234567890", "3.14159", "1,000,000", "1.000.000,00", "10^6", "2³", "x²", "H₂O", "½ ¼ ¾",
            "⅓ ⅔ ⅛", "١٢٣٤٥", "۱۲۳", "१२३", "๑๒๓", "一二三", "１２３", "𝟏𝟐𝟑", "Ⅷ", "1st 2nd 3rd 4th", "24/7",
            "9:30am", "2024-06-12", "12/06/2024", "+1 (555) 010-9999", "v2.0.1", "COVID-19", "B2B", "3D", "5G",
            "A4", "4x4", "007", "#12345", "SKU: AB-1234-XL", "ISBN 978-3-16-148410-0", "1e10", "-0.5", "∞", "π"]
    joins, units = ["", " ", "-", "x", ".", ","], ["cm", "mm", "kg", "g", "ml", "L", "%", '"', "in", "XL", ""]
    while len(out) < n:
        unit = rng.choice(units)
        out.append(f"{rng.randint(1, 999)}{rng.choice(joins)}{rng.randint(0, 99)}{rng.choice(['', ' '])}{unit}")
    return out[:n]


def repeated(rng, n):
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            out.append("".join(c * rng.randint(1, 6) for c in rng.choice(WORDS + ACCENTED)))
        elif kind == 1:
            out.append(rng.choice(PUNCT) * rng.randint(2, 30))
        elif kind == 2:
            out.append(rng.choice(["so", "ha", "lo", "no", "ye"]) * rng.randint(2, 20) + rng.choice(["", "!", "o"]))
        elif kind == 3:
            out.append(case_variant(rng, " ".join([rng.choice(WORDS)] * rng.randint(2, 10))))
        elif kind == 4:
            out.append("".join(rng.choice([c.upper(), c]) for c in rng.choice(DESC_SENTENCES)))
        else:
            out.append(rng.choice(EMOJI + ["a", "!", "é", "的"]) * rng.randint(2, 40))
    return out


def mojibake(rng, n):
    out = list(MOJIBAKE)
    out += [f"{rng.choice(WORDS)} {m}" for m in MOJIBAKE]
    controls = ["\x00", "\x01", "\x07", "\x08", "\x1b", "\x7f", "\x80", "\x85", "\x9f", "\ufffd", "\ufff9", "\u206a",
                "\ue000", "\U000f0000", "\ufdd0", "\uffff", "\U0001fffe", "\u061c", "\u200e", "\u200f", "\u202a",
                "\u202e", "\u2066", "\u2069", "\u034f", "\ufe0f", "\ufe0e", "\U000e0001", "\U000e0041"]
    out += [f"red{c}dress" for c in controls]
    out += [f"{c}red dress{c}" for c in controls]
    while len(out) < n:
        out.append("".join(rng.choice(MOJIBAKE + controls + WORDS + [" "]) for _ in range(rng.randint(2, 6))))
    return out[:n]


def fuzz(rng, n):
    """Random strings over a pool of all the above, to find what the lists missed."""
    pool = (WORDS + PUNCT + EMOJI + ENTITIES + SPACES + SPECIALS + MOJIBAKE + ACCENTED + UNITS
            + [s for group in SCRIPTS.values() for s in group] + list("abcXYZ019 ,.'&;#"))
    out = []
    for _ in range(n):
        out.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 10))))
    return out


def all_strings():
    rng = random.Random(SEED)
    groups = [
        ("query", queries(rng, 600)), ("product", products(rng, 500)), ("description", descriptions(rng, 120)), ("punctuation", punctuation(rng, 200)),
        ("accents", accents(rng, 200)), ("emoji", emoji(rng, 150)), ("scripts", scripts(rng, 160)),
        ("html", html_entities(rng, 250)), ("whitespace", whitespace(rng, 180)), ("long", long_strings(rng, 80)),
        ("special", specials(rng, 50)), ("numbers", numbers(rng, 150)), ("repeated", repeated(rng, 100)),
        ("ftfy", mojibake(rng, 120)), ("fuzz", fuzz(rng, 300)),
    ]
    seen, out = set(), []
    for group, texts in groups:
        for text in texts:
            if text not in seen:
                seen.add(text)
                out.append((group, text))
    return out


# --- the file --------------------------------------------------------------------------


# The other tokenisers are counted where they differ from CLIPTokenizerFast; OpenAI's ids are
# also kept where they differ from pg_vision's.
KEPT = ("openai",)
COUNTED = ("slow", "slow_noftfy", "openai")


def cases(strings, tokenizers):
    """One record per string: the reference ids ("hf"); where pg_vision must give other ids,
    those ("pgv") and the names of the rules that make them differ ("why"); the other
    tokenisers' ids where they differ from "hf". Also {name: strings where it differs from hf}."""
    out, counts = [], {name: 0 for name in ("pgv",) + COUNTED}
    for group, text in strings:
        hf = tokenizers["hf"](text)
        case = {"group": group, "text": text, "hf": hf}
        cleaned, rules = preclean(text)
        pgv = tokenizers["hf_split"](cleaned)
        if pgv != hf:
            if tokenizers["hf_split"](text) != hf:
                rules.add("special")
            case["pgv"], case["why"] = pgv, sorted(rules)
            counts["pgv"] += 1
        for name in COUNTED:
            ids = tokenizers[name](text)
            counts[name] += ids != hf
            if name in KEPT and ids != case.get("pgv", hf):
                case[name] = ids
        out.append(case)
    return out, counts


def write(path, header, records):
    """JSON with one case per line: small, and diffs show the cases that changed."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        for key, value in header.items():
            f.write(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n")
        f.write('"cases": [\n')
        f.write(",\n".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records))
        f.write("\n]}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--check", metavar="FILE", help="compare the fast tokeniser with FILE, write nothing")
    args = ap.parse_args()
    package_dir = open_clip_dir()
    with tempfile.TemporaryDirectory() as folder:
        write_vocab(os.path.join(package_dir, "bpe_simple_vocab_16e6.txt.gz"), folder)
        tokenizers, version = hf_tokenizers(folder)  # before the torch stand-in (see there)
        if not args.check:
            tokenizers["openai"] = openai_tokenizer(package_dir)
        check_known_ids(tokenizers)
        if args.check:
            return check(args.check, tokenizers, version)
        strings = all_strings()
        records, counts = cases(strings, tokenizers)
    import ftfy
    import tokenizers as tokenizers_package
    import transformers

    header = {
        "about": "CLIP token ids, context 77, truncated to SOT + the first 75 text tokens + EOT, no padding. "
        "hf: Hugging Face CLIPTokenizerFast, the reference. pgv, where it differs from hf: what pg_vision must give, "
        "CLIPTokenizerFast (special-token strings split as text) on the text after pg_vision's clean-up; why: the "
        "clean-up rules that made the difference. openai, where it differs from pg_vision's (pgv, else hf): "
        "OpenAI's SimpleTokenizer (clip.tokenize, truncate=True). differ_from_hf counts the strings where each differs "
        "from hf; slow: CLIPTokenizer (Python) with ftfy, slow_noftfy: without ftfy. "
        "Written by scripts/tokenizer_fixture.py; read by core/tests/tokenizer_equivalence.rs.",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers_package.__version__,
                     "ftfy": ftfy.__version__, "open_clip_torch": open_clip_version(), "seed": SEED},
        "strings": len(records),
        "differ_from_hf": counts,
    }
    write(args.out, header, records)
    print(f"wrote {args.out}: {len(records)} strings; differ from hf: {counts}")


def open_clip_version():
    from importlib.metadata import version

    return version("open_clip_torch")


def check(path, tokenizers, version):
    """Compares FILE's hf and pgv ids with this environment's CLIPTokenizerFast; fails if a
    string without a special-token spelling in it differs."""
    with open(path, encoding="utf-8") as f:
        recorded = json.load(f)["cases"]
    differ = {"hf": [], "pgv": []}
    for case in recorded:
        text = case["text"]
        if tokenizers["hf"](text) != case["hf"]:
            differ["hf"].append(text)
        if tokenizers["hf_split"](preclean(text)[0]) != case.get("pgv", case["hf"]):
            differ["pgv"].append(text)
    special = regex.compile(r"<\|(startoftext|endoftext)\|>", regex.IGNORECASE)
    other = sorted({t for texts in differ.values() for t in texts if not special.search(t)})
    print(f"transformers {version}: {len(recorded)} strings in {path}; differ: hf {len(differ['hf'])}, "
          f"pgv {len(differ['pgv'])}; {len(other)} of them without a special-token string")
    for text in other[:10]:
        print(f"  {text!r}")
    return 1 if other else 0


if __name__ == "__main__":
    sys.exit(main())
