"""Heuristic quality filters: Gopher quality, Gopher repetition, C4 quality, FineWeb quality.

Each filter re-implements the keep/remove decision of the datatrove 0.10.1 filter of the same
name, with the same parameter names and published defaults:

- :class:`GopherQualityFilter` (``gopher_quality``): word-count bounds, mean word length,
  hash and ellipsis to word ratios, bullet and ellipsis lines, alphabetic words, stop words.
- :class:`GopherRepetitionFilter` (``gopher_repetition``): duplicate line / paragraph
  fractions (by count and by characters), top n-gram and duplicated n-gram character fractions.
- :class:`C4QualityFilter` (``c4_quality``): C4's line rules (terminal punctuation, too few
  words, ``javascript``, policy lines, over-long words, Wikipedia citations) and document rules
  (``lorem ipsum``, curly brackets, too few sentences in the lines that remain). datatrove's
  filter rewrites the text (drops those lines); curamix never rewrites text: it takes the same
  decision on the text as it is, lines included, and leaves the text unchanged.
- :class:`FineWebQualityFilter` (``fineweb_quality``): lines ending in punctuation, short
  lines, characters in duplicated lines, newlines per word (list-like documents).

Words are datatrove's: its English word tokenizer is spaCy's blank English tokenizer (and
its sentencizer for C4's sentence count). That tokenizer is re-implemented here (its prefix,
suffix and infix rules, URL match and exception table, taken from spaCy 3.8, MIT licence), one
whitespace-separated chunk at a time with a per-process cache, so curamix needs no spaCy at
run time and tokenizes each document once for all four filters (:class:`HeuristicFilters`).
The n-gram rules and word statistics of a batch of documents run in numba kernels (plain
Python without numba; the same numbers).

Every input string gives a decision: empty text, control characters, lone surrogates and
megabyte-long lines included (linear time; no regex is run on an unbounded suffix).

References
----------
Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher",
appendix A.1.1 and table A1; Raffel et al. 2020, "Exploring the Limits of Transfer Learning with
a Unified Text-to-Text Transformer" (C4), section 2.2; Penedo et al. 2024, "The FineWeb
Datasets"; datatrove 0.10.1 ``pipeline/filters`` (``gopher_quality_filter.py``,
``gopher_repetition_filter.py``, ``c4_filters.py``, ``fineweb_quality_filter.py``) and
``utils/text.py``; spaCy 3.8 ``lang/punctuation.py``, ``lang/char_classes.py``,
``lang/en/tokenizer_exceptions.py``, ``tokenizer.pyx``, ``pipeline/sentencizer.pyx``.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import chain
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "HEURISTICS",
    "C4QualityFilter",
    "FineWebQualityFilter",
    "GopherQualityFilter",
    "GopherRepetitionFilter",
    "HeuristicFilters",
    "ngram_stats",
    "split_words",
    "word_stats",
]

# --- datatrove's constants (datatrove/utils/text.py, pipeline/filters/*.py) --------------------

_PUNCTUATION = (
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(
        map(chr, (x for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b)))
    )
)
# spaCy's sentencizer splits after these (Sentencizer.default_punct_chars) ...
_SENT_PUNCT = frozenset(
    "!.?\u0589\u061f\u06d4\u0700\u0701\u0702\u07f9\u0964\u0965\u104a\u104b\u1362\u1367\u1368"
    "\u166e\u1735\u1736\u1803\u1809\u1944\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f"
    "\u1c3b\u1c3c\u1c7e\u1c7f\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c\u3002\ua4ff\ua60e\ua60f"
    "\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb"
    "\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61\U00010a56\U00010a57\U00011047\U00011048"
    "\U000110be\U000110bf\U000110c0\U000110c1\U00011141\U00011142\U00011143\U000111c5\U000111c6"
    "\U000111cd\U000111de\U000111df\U00011238\U00011239\U0001123b\U0001123c\U000112a9\U0001144b"
    "\U0001144c\U000115c2\U000115c3\U000115c9\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce"
    "\U000115cf\U000115d0\U000115d1\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7"
    "\U00011641\U00011642\U0001173c\U0001173d\U0001173e\U00011a42\U00011a43\U00011a9b\U00011a9c"
    "\U00011c41\U00011c42\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44\U0001bc9f"
    "\U0001da88"
)
# ... and datatrove's TERMINAL_PUNCTUATION is that set plus 31 newer code points.
TERMINAL_PUNCTUATION = _SENT_PUNCT | frozenset(
    "\u061d\u061e\u0837\u0839\u083d\u083e\u17d4\u17d5\u17d6\u17d9\u17da\u1b7d\u1b7e\u2e53\u2e54"
    "\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86\U00010f87\U00010f88\U00010f89"
    "\U00011944\U00011946\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016e98"
)
PUNCTUATION_SET = frozenset(_PUNCTUATION) | TERMINAL_PUNCTUATION
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
CITATION_REGEX = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
ELLIPSIS = "..."
POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)

# --- spaCy's blank English tokenizer ---------------------------------------------------------
# Character classes of spacy/lang/char_classes.py as code-point ranges (hex). ALPHA_LOWER and
# ALPHA_UPPER are the caseless scripts plus ALPHA's lower / upper case letters, and one code
# point each that spaCy's hand-written ranges also hold (U+0294, U+03A2).
_ALPHA_RANGES = (
    "41-5A 61-7A C0-D6 D8-F6 F8-1BF 1C4-2AF 386 388-38A 38C 38E-38F 391-3A9 3AC-3AF 3B1-3C9 "
    "3CC-3CE 400-401 403-40A 40C-40D 410-451 453-45A 45C-45D 490-491 496-497 4A2-4A3 4AE-4AF "
    "4BA-4BB 4D8-4D9 4E8-4E9 591-5F4 620-64A 66E-6D5 6E5-6FF 750-77F 8A0-8BD 900-9FF B80-CFF "
    "D80-DFF 1100-137F 1D00-1D25 1D6B-1D77 1D79-1D9A 1E00-1EFF 2C60-2C7B 2C7E-2C7F 2E80-2FDF "
    "2FF0-30FF 31C0-31EF 3200-4DBF 4E00-9FFF A722-A76F A771-A787 A78B-A78E A790-A7B9 A7FA "
    "AB30-AB5A AB60-AB64 AC00-D7AF F900-FAFF FB1D-FBB1 FBD3-FD3D FD50-FDC7 FDF0-FDFB FE30-FE4F "
    "FE70-FEFC FF21-FF3A FF41-FF5A 1EE00-1EEBB 1F200-1F2FF 20000-2A6DF 2A700-2EBEF 2F800-2FA1F"
)
_CASELESS_RANGES = (
    "591-5F4 620-64A 66E-6D5 6E5-6FF 750-77F 8A0-8BD 900-9FF B80-CFF D80-DFF 1100-137F "
    "2E80-2FDF 2FF0-30FF 31C0-31EF 3200-4DBF 4E00-9FFF AC00-D7AF F900-FAFF FB1D-FBB1 FBD3-FD3D "
    "FD50-FDC7 FDF0-FDFB FE30-FE4F FE70-FEFC 1EE00-1EEBB 1F200-1F2FF 20000-2A6DF 2A700-2EBEF "
    "2F800-2FA1F"
)
_ICON_RANGES = (
    "A6 A9 AE B0 482 58D-58E 60E-60F 6DE 6E9 6FD-6FE 7F6 9FA B70 BF3-BF8 BFA C7F D4F D79 "
    "F01-F03 F13 F15-F17 F1A-F1F F34 F36 F38 FBE-FC5 FC7-FCC FCE-FCF FD5-FD8 109E-109F "
    "1390-1399 1940 19DE-19FF 1B61-1B6A 1B74-1B7C 2100-2101 2103-2106 2108-2109 2114 2116-2117 "
    "211E-2123 2125 2127 2129 212E 213A-213B 214A 214C-214D 214F 218A-218B 2195-2199 219C-219F "
    "21A1-21A2 21A4-21A5 21A7-21AD 21AF-21CD 21D0-21D1 21D3 21D5-21F3 2300-2307 230C-231F "
    "2322-2328 232B-237B 237D-239A 23B4-23DB 23E2-2426 2440-244A 249C-24E9 2500-25B6 25B8-25C0 "
    "25C2-25F7 2600-266E 2670-2767 2794-27BF 2800-28FF 2B00-2B2F 2B45-2B46 2B4D-2B73 2B76-2B95 "
    "2B98-2BC8 2BCA-2BFE 2CE5-2CEA 2E80-2E99 2E9B-2EF3 2F00-2FD5 2FF0-2FFB 3004 3012-3013 3020 "
    "3036-3037 303E-303F 3190-3191 3196-319F 31C0-31E3 3200-321E 322A-3247 3250 3260-327F "
    "328A-32B0 32C0-32FE 3300-33FF 4DC0-4DFF A490-A4C6 A828-A82B A836-A837 A839 AA77-AA79 FDFD "
    "FFE4 FFE8 FFED-FFEE FFFC-FFFD 10137-1013F 10179-10189 1018C-1018E 10190-1019B 101A0 "
    "101D0-101FC 10877-10878 10AC8 1173F 16B3C-16B3F 16B45 1BC9C 1D000-1D0F5 1D100-1D126 "
    "1D129-1D164 1D16A-1D16C 1D183-1D184 1D18C-1D1A9 1D1AE-1D1E8 1D200-1D241 1D245 1D300-1D356 "
    "1D800-1D9FF 1DA37-1DA3A 1DA6D-1DA74 1DA76-1DA83 1DA85-1DA86 1ECAC 1F000-1F02B 1F030-1F093 "
    "1F0A0-1F0AE 1F0B1-1F0BF 1F0C1-1F0CF 1F0D1-1F0F5 1F110-1F16B 1F170-1F1AC 1F1E6-1F202 "
    "1F210-1F23B 1F240-1F248 1F250-1F251 1F260-1F265 1F300-1F3FA 1F400-1F6D4 1F6E0-1F6EC "
    "1F6F0-1F6F9 1F700-1F773 1F780-1F7D8 1F800-1F80B 1F810-1F847 1F850-1F859 1F860-1F887 "
    "1F890-1F8AD 1F900-1F90B 1F910-1F93E 1F940-1F970 1F973-1F976 1F97A 1F97C-1F9A2 1F9B0-1F9B9 "
    "1F9C0-1F9C2 1F9D0-1F9FF 1FA60-1FA6D"
)
_UNITS = (
    "km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb oz "
    "m/s km/h kmh mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K % км км² км³ м м² м³ дм дм² "
    "дм³ см см² см³ мм мм² мм³ нм кг г мг м/с км/ч кПа Па мбар Кб КБ кб Мб МБ мб Гб ГБ гб Тб ТБ "
    "тбكم كم² كم³ م م² م³ سم سم² سم³ مم مم² مم³ كم غرام جرام جم كغ ملغ كوب اكواب"
)  # "тбكم" (no space) as in spaCy
_CURRENCY = (
    r"\$ £ € ¥ ฿ US\$ C\$ A\$ ₽ ﷼ ₴ ₠ ₡ ₢ ₣ ₤ ₥ ₦ ₧ ₨ ₩ ₪ ₫ € ₭ ₮ ₯ ₰ ₱ ₲ ₳ ₴ ₵ ₶ ₷ ₸ ₹ ₺ ₻ ₼ ₽ ₾ ₿"
)
_PUNCT = (
    r"… …… , : ; \! \? ¿ ؟ ¡ \( \) \[ \] \{ \} < > _ # \* & 。 ？ ！ ， 、 ； ： ～ · । ، ۔ ؛ ٪"
)
_QUOTES = r"""\' " ” “ ` ‘ ´ ’ ‚ , „ » « 「 」 『 』 （ ） 〔 〕 【 】 《 》 〈 〉 〈 〉  ⟦ ⟧"""
_HYPHENS = "- – — -- --- —— ~"
# the tokenizer exceptions of spacy.blank("en") (lang/en/tokenizer_exceptions.py with the base
# exceptions), without their typographic-apostrophe twins (added below, as spaCy's update_exc
# does) and without the four whitespace keys (whitespace never reaches a word). KEEP: one token;
# SPLIT: the pieces, "|"-separated.
_EXCEPTIONS_KEEP = r"""
' '' 'Cause 'Cos 'Coz 'Cuz 'S 'bout 'cause 'cos 'coz 'cuz 'd 'em 'll 'nuff 're 's (*_*) (-8
(-: (-; (-_-) (._.) (: (; (= (>_<) (^_^) (o: (¬_¬) (ಠ_ಠ) (╯°□°）╯︵┻━┻ )-: ): -_- -__- ._. 0.0
0.o 0_0 0_o 8) 8-) 8-D 8D :'( :') :'-( :'-) :( :(( :((( :() :) :)) :))) :* :-( :-(( :-(((
:-) :-)) :-))) :-* :-/ :-0 :-3 :-> :-D :-O :-P :-X :-] :-o :-p :-x :-| :-} :/ :0 :1 :3 :> :D
:O :P :X :] :o :o) :p :x :| :} ;) ;-) ;-D ;D ;_; <.< </3 <3 <33 <333 <space> =( =) =/ =3 =D
=[ =] =| >.< >.> >:( >:o ><(((*> @_@ Adm. Ak. Ala. Apr. Ariz. Ark. Aug. Bros. C++ Calif. Co.
Colo. Conn. Corp. D.C. Dec. Del. Doin Doin' Dr. E.G. E.g. Feb. Fla. Ga. Gen. Goin Goin' Gov.
Havin Havin' I.E. I.e. Ia. Id. Ill. Inc. Ind. Jan. Jr. Jul. Jun. Kan. Kans. Ky. La. Lovin
Lovin' Ltd. Ma'am Mar. Mass. Md. Messrs. Mich. Minn. Miss. Mo. Mont. Mr. Mrs. Ms. Mt. N.C.
N.D. N.H. N.J. N.M. N.Y. Neb. Nebr. Nev. Nothin Nothin' Nov. Nuthin Nuthin' O'clock O.O O.o
O_O O_o Oct. Okla. Ol Ol' Ore. Pa. Ph.D. Prof. Rep. Rev. S.C. Sen. Sep. Sept. Somethin
Somethin' St. Tenn. V.V V_V Va. Wash. Wis. XD XDD [-: [: [= \") \n \t ]= ^_^ ^__^ ^___^ a.
a.m. and/or b. c. co. d. doin doin' e. e.g. em f. g. goin goin' h. havin havin' i. i.e. j.
k. l. ll lovin lovin' m. ma'am n. nothin nothin' nuff nuthin nuthin' o'clock o. o.0 o.O o.o
o_0 o_O o_o ol ol' p. p.m. q. r. s. somethin somethin' t. u. v. v.s. v.v v_v vs. w. w/o x.
xD xDD y. z. ¯\(ツ)/¯ ä. ö. ü. ಠ_ಠ ಠ︵ಠ — ‘S ‘s
"""
_EXCEPTIONS_SPLIT = r"""
10|a.m. 10|am 10|p.m. 10|pm 11|a.m. 11|am 11|p.m. 11|pm 12|a.m. 12|am 12|p.m. 12|pm 1|a.m.
1|am 1|p.m. 1|pm 2|a.m. 2|am 2|p.m. 2|pm 3|a.m. 3|am 3|p.m. 3|pm 4|a.m. 4|am 4|p.m. 4|pm
5|a.m. 5|am 5|p.m. 5|pm 6|a.m. 6|am 6|p.m. 6|pm 7|a.m. 7|am 7|p.m. 7|pm 8|a.m. 8|am 8|p.m.
8|pm 9|a.m. 9|am 9|p.m. 9|pm Ai|n't Ai|nt Are|n't Are|nt C'm|on Can|not Ca|n't Ca|n't|'ve
Ca|nt Ca|nt|ve Could|'ve Could|n't Could|n't|'ve Could|nt Could|nt|ve Could|ve Dare|n't
Dare|nt Did|n't Did|n't|'ve Did|nt Did|nt|ve Does|n't Does|n't|'ve Does|nt Does|nt|ve Do|n't
Do|n't|'ve Do|nt Do|nt|ve Gon|na Got|ta Had|n't Had|n't|'ve Had|nt Had|nt|ve Has|n't Has|nt
Have|n't Have|nt He|'d He|'d|'ve He|'ll He|'ll|'ve He|'s He|d He|d|ve He|ll|ve He|s How|'d
How|'d|'ve How|'d|'y How|'ll How|'ll|'ve How|'re How|'s How|'ve How|d How|d|ve How|ll
How|ll|ve How|re How|s How|ve Is|n't Is|nt It|'d It|'d|'ve It|'ll It|'ll|'ve It|'s It|d
It|d|ve It|ll It|ll|ve I|'d I|'d|'ve I|'ll I|'ll|'ve I|'m I|'m|a I|'ve I|d I|d|ve I|ll|ve
I|m I|m|a I|ve Let|'s May|n't May|n't|'ve May|nt May|nt|ve Might|'ve Might|n't Might|n't|'ve
Might|nt Might|nt|ve Might|ve Must|'ve Must|n't Must|n't|'ve Must|nt Must|nt|ve Must|ve
Need|n't Need|n't|'ve Need|nt Need|nt|ve Not|'ve Not|ve Ought|n't Ought|n't|'ve Ought|nt
Ought|nt|ve Sha|n't Sha|n't|'ve Sha|nt Sha|nt|ve She|'d She|'d|'ve She|'ll She|'ll|'ve
She|'s She|d|ve She|ll|ve She|s Should|'ve Should|n't Should|n't|'ve Should|nt Should|nt|ve
Should|ve That|'d That|'d|'ve That|'ll That|'ll|'ve That|'s That|d That|d|ve That|ll
That|ll|ve That|s There|'d There|'d|'ve There|'ll There|'ll|'ve There|'re There|'s There|'ve
There|d There|d|ve There|ll There|ll|ve There|re There|s There|ve These|'d These|'d|'ve
These|'ll These|'ll|'ve These|'re These|'ve These|d These|d|ve These|ll These|ll|ve These|re
These|ve They|'d They|'d|'ve They|'ll They|'ll|'ve They|'re They|'ve They|d They|d|ve
They|ll They|ll|ve They|re They|ve This|'d This|'d|'ve This|'ll This|'ll|'ve This|'s This|d
This|d|ve This|ll This|ll|ve This|s Those|'d Those|'d|'ve Those|'ll Those|'ll|'ve Those|'re
Those|'ve Those|d Those|d|ve Those|ll Those|ll|ve Those|re Those|ve Was|n't Was|nt Were|n't
Were|nt We|'d We|'d|'ve We|'ll We|'ll|'ve We|'re We|'ve We|d We|d|ve We|ll|ve We|ve What|'d
What|'d|'ve What|'ll What|'ll|'ve What|'re What|'s What|'ve What|d What|d|ve What|ll
What|ll|ve What|re What|s What|ve When|'d When|'d|'ve When|'ll When|'ll|'ve When|'re When|'s
When|'ve When|d When|d|ve When|ll When|ll|ve When|re When|s When|ve Where|'d Where|'d|'ve
Where|'ll Where|'ll|'ve Where|'re Where|'s Where|'ve Where|d Where|d|ve Where|ll Where|ll|ve
Where|re Where|s Where|ve Who|'d Who|'d|'ve Who|'ll Who|'ll|'ve Who|'re Who|'s Who|'ve Who|d
Who|d|ve Who|ll Who|ll|ve Who|s Who|ve Why|'d Why|'d|'ve Why|'ll Why|'ll|'ve Why|'re Why|'s
Why|'ve Why|d Why|d|ve Why|ll Why|ll|ve Why|re Why|s Why|ve Would|'ve Would|n't
Would|n't|'ve Would|nt Would|nt|ve Would|ve Wo|n't Wo|n't|'ve Wo|nt Wo|nt|ve You|'d
You|'d|'ve You|'ll You|'ll|'ve You|'re You|'ve You|d You|d|ve You|ll You|ll|ve You|re You|ve
ai|n't ai|nt are|n't are|nt c'm|on can|not ca|n't ca|n't|'ve ca|nt ca|nt|ve could|'ve
could|n't could|n't|'ve could|nt could|nt|ve could|ve dare|n't dare|nt did|n't did|n't|'ve
did|nt did|nt|ve does|n't does|n't|'ve does|nt does|nt|ve do|n't do|n't|'ve do|nt do|nt|ve
gon|na got|ta had|n't had|n't|'ve had|nt had|nt|ve has|n't has|nt have|n't have|nt he|'d
he|'d|'ve he|'ll he|'ll|'ve he|'s he|d he|d|ve he|ll|ve he|s how|'d how|'d|'ve how|'d|'y
how|'ll how|'ll|'ve how|'re how|'s how|'ve how|d how|d|ve how|ll how|ll|ve how|re how|s
how|ve is|n't is|nt it|'d it|'d|'ve it|'ll it|'ll|'ve it|'s it|d it|d|ve it|ll it|ll|ve i|'d
i|'d|'ve i|'ll i|'ll|'ve i|'m i|'m|a i|'ve i|d i|d|ve i|ll|ve i|m i|m|a i|ve let|'s may|n't
may|n't|'ve may|nt may|nt|ve might|'ve might|n't might|n't|'ve might|nt might|nt|ve might|ve
must|'ve must|n't must|n't|'ve must|nt must|nt|ve must|ve need|n't need|n't|'ve need|nt
need|nt|ve not|'ve not|ve ought|n't ought|n't|'ve ought|nt ought|nt|ve sha|n't sha|n't|'ve
sha|nt sha|nt|ve she|'d she|'d|'ve she|'ll she|'ll|'ve she|'s she|d|ve she|ll|ve she|s
should|'ve should|n't should|n't|'ve should|nt should|nt|ve should|ve that|'d that|'d|'ve
that|'ll that|'ll|'ve that|'s that|d that|d|ve that|ll that|ll|ve that|s there|'d
there|'d|'ve there|'ll there|'ll|'ve there|'re there|'s there|'ve there|d there|d|ve
there|ll there|ll|ve there|re there|s there|ve these|'d these|'d|'ve these|'ll these|'ll|'ve
these|'re these|'ve these|d these|d|ve these|ll these|ll|ve these|re these|ve they|'d
they|'d|'ve they|'ll they|'ll|'ve they|'re they|'ve they|d they|d|ve they|ll they|ll|ve
they|re they|ve this|'d this|'d|'ve this|'ll this|'ll|'ve this|'s this|d this|d|ve this|ll
this|ll|ve this|s those|'d those|'d|'ve those|'ll those|'ll|'ve those|'re those|'ve those|d
those|d|ve those|ll those|ll|ve those|re those|ve was|n't was|nt were|n't were|nt we|'d
we|'d|'ve we|'ll we|'ll|'ve we|'re we|'ve we|d we|d|ve we|ll|ve we|ve what|'d what|'d|'ve
what|'ll what|'ll|'ve what|'re what|'s what|'ve what|d what|d|ve what|ll what|ll|ve what|re
what|s what|ve when|'d when|'d|'ve when|'ll when|'ll|'ve when|'re when|'s when|'ve when|d
when|d|ve when|ll when|ll|ve when|re when|s when|ve where|'d where|'d|'ve where|'ll
where|'ll|'ve where|'re where|'s where|'ve where|d where|d|ve where|ll where|ll|ve where|re
where|s where|ve who|'d who|'d|'ve who|'ll who|'ll|'ve who|'re who|'s who|'ve who|d who|d|ve
who|ll who|ll|ve who|s who|ve why|'d why|'d|'ve why|'ll why|'ll|'ve why|'re why|'s why|'ve
why|d why|d|ve why|ll why|ll|ve why|re why|s why|ve would|'ve would|n't would|n't|'ve
would|nt would|nt|ve would|ve wo|n't wo|n't|'ve wo|nt wo|nt|ve y'|all you|'d you|'d|'ve
you|'ll you|'ll|'ve you|'re you|'ve you|d you|d|ve you|ll you|ll|ve you|re you|ve y|all
°|C|. °|F|. °|K|. °|c|. °|f|. °|k|.
"""


def _ranges(spec: str) -> list[tuple[int, int]]:
    """``"41-5A 61"`` -> ``[(0x41, 0x5A), (0x61, 0x61)]``."""
    out = []
    for part in spec.split():
        a, _, b = part.partition("-")
        out.append((int(a, 16), int(b or a, 16)))
    return out


def _merge(points: Sequence[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for p in sorted(set(points)):
        if out and out[-1][1] == p - 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return [(a, b) for a, b in out]


def _class_body(ranges: Sequence[tuple[int, int]]) -> str:
    """The inside of a regex character class holding ``ranges``."""
    return "".join(f"\\U{a:08X}" if a == b else f"\\U{a:08X}-\\U{b:08X}" for a, b in ranges)


def _char_classes() -> dict[str, str]:
    """spaCy's ALPHA, ALPHA_LOWER, ALPHA_UPPER and ICONS as regex class bodies."""
    alpha = _ranges(_ALPHA_RANGES)
    caseless = _ranges(_CASELESS_RANGES)
    cased = [o for a, b in alpha if (a, b) not in caseless for o in range(a, b + 1)]
    lower = _merge([o for o in cased if chr(o).islower()] + [0x294])
    upper = _merge([o for o in cased if chr(o).isupper()] + [0x3A2])
    return {
        "alpha": _class_body(alpha),
        "lower": _class_body(lower + caseless),
        "upper": _class_body(upper + caseless),
        "icons": _class_body(_ranges(_ICON_RANGES)),
    }


def _split_chars(chars: str) -> list[str]:
    return chars.strip().split(" ")


_URL_PATTERN = (
    # spacy/lang/tokenizer_exceptions.py URL_PATTERN (dperini's URL regex, MIT, with spaCy's mods)
    r"^(?:(?:[\w\+\-\.]{{2,}})://)?"
    r"(?:\S+(?::\S*)?@)?"
    r"(?:"
    r"(?!(?:10|127)(?:\.\d{{1,3}}){{3}})"
    r"(?!(?:169\.254|192\.168)(?:\.\d{{1,3}}){{2}})"
    r"(?!172\.(?:1[6-9]|2\d|3[0-1])(?:\.\d{{1,3}}){{2}})"
    r"(?:[1-9]\d?|1\d\d|2[01]\d|22[0-3])"
    r"(?:\.(?:1?\d{{1,2}}|2[0-4]\d|25[0-5])){{2}}"
    r"(?:\.(?:[1-9]\d?|1\d\d|2[0-4]\d|25[0-4]))"
    r"|"
    r"(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{{0,62}})?[A-Za-z0-9\u00a1-\uffff]\.)+"
    r"(?:[{lower}]{{2,63}})"
    r")"
    r"(?::\d{{2,5}})?"
    r"(?:[/?#]\S*)?"
    r"$"
)
_WINDOW = 16  # a bounded suffix rule spans at most 7 characters (5, and a 2-character lookbehind)


class _EnglishTokenizer:
    """spaCy 3.8's ``spacy.blank("en")`` tokenizer and sentencizer, one chunk at a time.

    spaCy splits text on whitespace (``str.isspace``) and tokenizes each chunk on its own:
    special cases (the exception table), then prefixes and suffixes peeled off in turn, then
    the URL match or the infix splits, then a pass that re-merges special cases the affix rules
    split (its ``_special_matcher``). Words are the non-whitespace tokens, which is what
    datatrove keeps (``strip_strings``). Chunks are cached (``cache_size`` entries, then the
    cache is cleared).

    Done differently, with the same tokens: whitespace runs are not turned into tokens (the
    sentencizer sees them where spaCy has them); only the prefix / suffix rules that can start /
    end with the chunk's first / last character are tried, and infix rules only at the
    characters an infix can start with; a suffix is looked for in the last 16 characters of a
    long chunk (suffix rules span at most 7, or are a run of dots, followed to its start); so a
    megabyte chunk is split in linear time (spaCy is quadratic on it). spaCy's special-case
    pass runs over the whole text: a match across chunks joined by one space never changes a
    token (no rule has a space) but can take the tokens of a match inside a chunk; so a chunk
    where that pass merged tokens is redone with its neighbours' tokens (``_chunk_tokens``).
    """

    def __init__(self, cache_size: int = 1 << 19) -> None:
        cls = _char_classes()
        al, au, a, icons = cls["lower"], cls["upper"], cls["alpha"], cls["icons"]
        q = _QUOTES.strip().replace(" ", "")
        list_punct, list_quotes = _split_chars(_PUNCT), _split_chars(_QUOTES)
        currency, units = _CURRENCY.strip().replace(" ", "|"), _UNITS.strip().replace(" ", "|")
        punct = _PUNCT.strip().replace(" ", "|")
        icon_set = frozenset(chr(o) for a, b in _ranges(_ICON_RANGES) for o in range(a, b + 1))
        money = _split_chars(_CURRENCY)

        def first(p: str) -> set[str]:
            return {p.replace("\\", "")[0]}

        def last(p: str) -> set[str]:
            return {p.replace("\\", "")[-1]}

        # each rule with the characters a match of it can start (prefixes) / end (suffixes)
        # with; spaCy's order (util.compile_prefix_regex / compile_suffix_regex)
        prefixes = [(p, first(p)) for p in ("§", "%", "=", "—", "–")] + [(r"\+(?![0-9])", {"+"})]
        prefixes += [(p, first(p)) for p in list_punct] + [(r"\.\.+", {"."}), ("…", {"…"})]
        prefixes += [(p, first(p)) for p in list_quotes if p.strip()]
        prefixes += [(p, first(p)) for p in money] + [(f"[{icons}]", icon_set)]
        suffixes = [(p, last(p)) for p in list_punct] + [(r"\.\.+", {"."}), ("…", {"…"})]
        suffixes += [(p, last(p)) for p in list_quotes if p.strip()] + [(f"[{icons}]", icon_set)]
        suffixes += [(p, last(p)) for p in ("'s", "'S", "’s", "’S", "—", "–")]
        suffixes += [(r"(?<=[0-9])\+", {"+"}), (r"(?<=°[FfCcKk])\.", {"."})]
        suffixes += [
            (rf"(?<=[0-9])(?:{currency})", set().union(*map(last, money))),
            (rf"(?<=[0-9])(?:{units})", {u[-1] for u in _split_chars(_UNITS)}),
            (rf"(?<=[0-9{al}%²\-\+{punct}(?:{q})])\.", {"."}),
            (rf"(?<=[{au}][{au}])\.", {"."}),
        ]
        # spaCy's infix rules, each written to consume its first character before its
        # lookbehind, so a match can only start at one of these characters
        bmp_icons = _class_body([(a, b) for a, b in _ranges(_ICON_RANGES) if b < 0x10000])
        # (any astral character is a candidate: a class of many astral ranges is slow to scan)
        self._infix_start = re.compile(
            f"[.…+\\-*^,–—~:<>=/{bmp_icons}\\U00010000-\\U0010FFFF]"
        ).finditer
        hyphens = [rf"{h}(?<=[{a}0-9]{h})(?=[{a}])" for h in _split_chars(_HYPHENS)]
        infixes = [
            r"\.\.+",
            "…",
            f"[{icons}]",
            r"[+\-\*^](?<=[0-9][+\-\*^])(?=[0-9-])",
            rf"\.(?<=[{al}{q}]\.)(?=[{au}{q}])",
            rf",(?<=[{a}],)(?=[{a}])",
            *hyphens,
            rf"[:<>=/](?<=[{a}0-9][:<>=/])(?=[{a}])",
        ]
        self._infix = re.compile("|".join(infixes)).match
        self._url = re.compile("(?u)" + _URL_PATTERN.format(lower=al)).match
        self._prefixes, self._suffixes = prefixes, suffixes
        self._by_first: dict[str, Any] = {}  # character -> the prefix rules starting with it
        self._by_last: dict[str, Any] = {}  # character -> the suffix rules ending with it
        self._compiled: dict[tuple[bool, tuple[int, ...]], Any] = {}
        rules: dict[str, tuple[str, ...]] = {k: (k,) for k in _EXCEPTIONS_KEEP.split()}
        rules.update((s.replace("|", ""), tuple(s.split("|"))) for s in _EXCEPTIONS_SPLIT.split())
        for k, v in list(rules.items()):  # spaCy's expand_exc(excs, "'", "’")
            if "'" in k:
                rules[k.replace("'", "’")] = tuple(p.replace("'", "’") for p in v)
        self.rules = rules
        self._max_rule = max(map(len, rules))
        # the special-case pass: rules whose text the affix rules would split
        self._patterns: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        for key in sorted(rules):
            n = len(key)
            if self._prefix_len(key, 0, n) or self._suffix_len(key, 0, n) or self._infixes(key):
                pattern = tuple(self._split(key, specials=False))
                if len(pattern) > 1:  # a one-token match gives back the same token
                    self._patterns.setdefault(pattern[:2], []).append(pattern)
        self._firsts = frozenset(p[0] for p in self._patterns)
        self._max_pattern = max(len(p) for ps in self._patterns.values() for p in ps)
        self._cache: dict[str, tuple[str, ...]] = {}
        self._sent_cache: dict[str, tuple[int, bool, int, bool]] = {}
        self._cache_size = cache_size

    # one chunk (no whitespace) ------------------------------------------------------------------
    def _rules_for(self, ch: str, suffix: bool) -> Any:
        """The compiled alternation of the prefix rules starting with ``ch`` (anchored at the
        start) or of the suffix rules ending with it (anchored at the end), in spaCy's order;
        None when there are none. At one position the rules that cannot start / end there
        cannot match, so this finds what the whole alternation finds."""
        table = self._by_last if suffix else self._by_first
        got = table.get(ch, False)
        if got is False:
            rules = self._suffixes if suffix else self._prefixes
            which = tuple(i for i, (_, chars) in enumerate(rules) if ch in chars)
            got = None
            if which:
                key = (suffix, which)
                if key not in self._compiled:
                    alts = "|".join(rules[i][0] + ("$" if suffix else "") for i in which)
                    self._compiled[key] = (
                        re.compile(alts).search if suffix else re.compile(alts).match
                    )
                got = self._compiled[key]
            table[ch] = got
        return got

    def _prefix_len(self, s: str, lo: int, hi: int) -> int:
        """spaCy's ``find_prefix(s[lo:hi])``."""
        match = self._rules_for(s[lo], suffix=False)
        m = None if match is None else match(s, lo, hi)
        return 0 if m is None else m.end() - lo

    def _suffix_len(self, s: str, lo: int, hi: int) -> int:
        """spaCy's ``find_suffix(s[lo:hi])``: the leftmost match ending at ``hi``."""
        search = self._rules_for(s[hi - 1], suffix=True)
        if search is None:
            return 0
        if hi - lo <= _WINDOW:
            m = search(s[lo:hi])
        else:  # lookbehinds may look before the window: it starts inside s[lo:hi]
            m = search(s, hi - _WINDOW, hi)
            if m is not None and m.start() == hi - _WINDOW:  # a dot run may start earlier
                m = search(s[lo:hi])
        return 0 if m is None else m.end() - m.start()

    def _infixes(self, core: str) -> list[tuple[int, int]]:
        """spaCy's ``find_infix(core)``: the (start, end) of each infix match, left to
        right, not overlapping."""
        out: list[tuple[int, int]] = []
        end = 0
        match = self._infix
        for c in self._infix_start(core):
            p = c.start()
            if p >= end:
                m = match(core, p)
                if m is not None:
                    end = m.end()
                    out.append((p, end))
        return out

    def _split(self, s: str, specials: bool = True) -> list[str]:
        """spaCy's ``_tokenize`` (``_split_affixes`` + ``_attach_tokens``) of one chunk."""
        rules = self.rules if specials else {}
        if s in rules:
            return list(rules[s])
        maxr = self._max_rule if specials else 0
        prefixes: list[str] = []
        suffixes: list[str] = []
        lo, hi, last = 0, len(s), 0
        while lo < hi and hi - lo != last:
            if hi - lo <= maxr and s[lo:hi] in rules:
                break
            last = hi - lo
            pre = self._prefix_len(s, lo, hi)
            if pre and lo + pre < hi and hi - lo - pre <= maxr and s[lo + pre : hi] in rules:
                prefixes.append(s[lo : lo + pre])
                lo += pre
                break
            suf = self._suffix_len(s, lo + pre, hi)
            if suf and hi - suf > lo and hi - suf - lo <= maxr and s[lo : hi - suf] in rules:
                suffixes.append(s[hi - suf : hi])
                hi -= suf
                break
            if pre:
                prefixes.append(s[lo : lo + pre])
                lo += pre
            if suf:
                suffixes.append(s[hi - suf : hi])
                hi -= suf
        tokens = prefixes
        if lo < hi:
            core = s[lo:hi]
            if core in rules:
                tokens.extend(rules[core])
            elif "." in core and self._url(core):
                tokens.append(core)
            else:
                start = 0
                for a, b in self._infixes(core):
                    if a == 0:
                        continue
                    if a != start:
                        tokens.append(core[start:a])
                    if a != b:
                        tokens.append(core[a:b])
                    start = b
                if start < len(core):
                    tokens.append(core[start:])
        tokens.extend(reversed(suffixes))
        if specials and len(tokens) > 1:
            merged = self._merge_specials(tokens)
            if merged != tokens:  # see _chunk_tokens
                return _Merged(merged, tokens)
        return tokens

    def _merge_specials(
        self, tokens: list[str], before: Sequence[str] = (), after: Sequence[str] = ()
    ) -> list[str]:
        """spaCy's ``_apply_special_cases`` on one chunk's tokens: every match of a rule's
        affix-split tokens, longest first, then leftmost; a match whose first or last token an
        earlier one (kept or not) took is dropped; a kept match inside the chunk becomes the
        rule's tokens. ``before`` / ``after``: the tokens of the chunks joined to this one by
        a single space (spaCy matches across them too: such a match has no rule, but takes its
        tokens)."""
        seq = [*before, *tokens, *after]
        if self._firsts.isdisjoint(seq):
            return tokens
        lo, hi = len(before), len(before) + len(tokens)
        spans = []
        patterns = self._patterns
        for i in range(len(seq)):
            for p in patterns.get(tuple(seq[i : i + 2]), ()):
                if i < hi and i + len(p) > lo and tuple(seq[i : i + len(p)]) == p:
                    spans.append((i, i + len(p)))
        if not spans:
            return tokens
        spans.sort(key=lambda se: (se[0] - se[1], se[0]))
        seen: set[int] = set()
        keep = []
        for a, b in spans:
            if a not in seen and b - 1 not in seen and lo <= a and b <= hi:
                keep.append((a, b))
            seen.update(range(a, b))
        out: list[str] = []
        i = lo
        for a, b in sorted(keep):
            out += seq[i:a]
            out += self.rules["".join(seq[a:b])]
            i = b
        return out + seq[i:hi]

    def chunk(self, s: str) -> tuple[str, ...]:
        """The tokens of one whitespace-free chunk (cached); a :class:`_Merged` when spaCy's
        special-case pass merged some of them."""
        got = self._cache.get(s)
        if got is None:
            toks = self._split(s)
            got = toks if isinstance(toks, _Merged) else tuple(toks)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            if len(s) <= 1000:
                self._cache[s] = got
        return got

    # documents ----------------------------------------------------------------------------------
    def words(self, text: str) -> list[str]:
        """datatrove's ``split_into_words(text, "en")``: spaCy's non-whitespace tokens."""
        chunks = text.split()
        got = list(map(self._cache.get, chunks))
        if None in got:
            got = [g if g is not None else self.chunk(c) for g, c in zip(got, chunks, strict=True)]
        if _Merged in map(type, got):
            got = [toks for _, _, toks in self._chunk_tokens(text)]
        return list(chain.from_iterable(got))

    def _chunk_tokens(self, text: str) -> list[tuple[bool, int, tuple[str, ...]]]:
        """Per chunk: whether a whitespace token precedes it, where it starts, its tokens.

        A chunk whose special-case pass merged tokens is redone with the tokens of the chunks
        joined to it by single spaces, as spaCy runs that pass over the whole text (a match
        across chunks changes nothing, but can take the tokens of a merge inside one)."""
        items = [(m.group(1), m.start(2), m.group(2)) for m in _GAP_CHUNK.finditer(text)]
        out = []
        width = self._max_pattern - 1
        chunks = [self.chunk(c) for _, _, c in items]
        pre = [t.pre if isinstance(t, _Merged) else t for t in chunks]
        for k, (gap, start, _) in enumerate(items):
            ws = bool(gap) and (k == 0 or gap != " ")
            toks = chunks[k]
            if isinstance(toks, _Merged):
                before: list[str] = []
                j = k
                while len(before) < width and j > 0 and items[j][0] == " ":
                    j -= 1
                    before[:0] = pre[j]
                after: list[str] = []
                j = k
                while len(after) < width and j + 1 < len(items) and items[j + 1][0] == " ":
                    j += 1
                    after += pre[j]
                if before or after:
                    toks = tuple(self._merge_specials(list(pre[k]), before[-width:], after[:width]))
            out.append((ws, start, toks))
        return out

    def _transitions(self, s: str) -> tuple[int, bool, int, bool] | None:
        """The sentencizer over one chunk's tokens, from either state: (breaks, state after)
        when no sentence-final character is pending, then when one is. None when the chunk's
        tokens depend on its neighbours (:class:`_Merged`)."""
        got = self._sent_cache.get(s, False)
        if got is False:
            res: list[Any] = []
            toks = self.chunk(s)
            if isinstance(toks, _Merged):
                self._sent_cache[s] = None
                return None
            for seen in (False, True):
                n = 0
                for t in toks:
                    final = t in _SENT_PUNCT
                    if seen and not final and not _is_punct(t):
                        n, seen = n + 1, False
                    elif final:
                        seen = True
                res += [n, seen]
            got = (res[0], res[1], res[2], res[3])
            if len(self._sent_cache) >= self._cache_size:
                self._sent_cache.clear()
            if len(s) <= 1000:
                self._sent_cache[s] = got
        return got

    def _sentence_ends(self, text: str) -> list[int]:
        """Where each spaCy sentence but the last ends (the end of its last token)."""
        ends: list[int] = []
        seen = False
        prev_end = last = 0
        for ws, pos, toks in self._chunk_tokens(text):
            # a whitespace token: leading whitespace, or a gap other than one space (spaCy
            # gives one space to the token before it)
            if seen and ws:
                ends.append(prev_end)
                seen = False
            for t in toks:
                final = t in _SENT_PUNCT
                if seen and not final and not _is_punct(t):
                    ends.append(prev_end)
                    seen = False
                elif final:
                    seen = True
                pos += len(t)
                prev_end = pos
            last = pos
        if seen and text[last:] not in ("", " "):  # trailing whitespace token
            ends.append(prev_end)
        return ends

    def n_sentences(self, line: str) -> int:
        """``len(split_into_sentences(line))``: spaCy's sentencizer starts a sentence at the
        first token that is not punctuation after a sentence-final character."""
        chunks = line.split()
        k = len(chunks)
        if k and len(line) == sum(map(len, chunks)) + k - 1 and line.count(" ") == k - 1:
            n, seen = 1, False  # single spaces only: no whitespace tokens
            for t in map(self._transitions, chunks):
                if t is None:
                    break
                n, seen = (n + t[2], t[3]) if seen else (n + t[0], t[1])
            else:
                return n
        return len(self._sentence_ends(line)) + 1

    def sentences(self, text: str) -> list[str]:
        """datatrove's ``split_into_sentences(text, "en")``: the text cut after each spaCy
        sentence but the last, which runs to the end of the text."""
        ends = self._sentence_ends(text)
        return [text[a:b] for a, b in zip([0, *ends], [*ends, len(text)], strict=True)]


_GAP_CHUNK = re.compile(r"(\s*)(\S+)")


class _Merged(tuple):
    """A chunk's tokens after spaCy's special-case pass merged some (``pre``: before)."""

    pre: tuple[str, ...]

    def __new__(cls, tokens: Sequence[str], pre: Sequence[str]) -> _Merged:
        self = super().__new__(cls, tokens)
        self.pre = tuple(pre)
        return self


def _is_punct(token: str) -> bool:
    """spaCy's ``is_punct`` lexical attribute: every character is Unicode punctuation (P*)."""
    return all(unicodedata.category(c)[0] == "P" for c in token)


_TOKENIZER: _EnglishTokenizer | None = None


def _tokenizer() -> _EnglishTokenizer:
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = _EnglishTokenizer()
    return _TOKENIZER


def split_words(text: str) -> list[str]:
    """datatrove's English words of ``text`` (``split_into_words(text, "en")``): spaCy's
    blank English tokenizer, whitespace tokens dropped. Never raises, for any ``str``."""
    return _tokenizer().words(text)


# --- kernels: word statistics and n-grams -----------------------------------------------------


def _word_stats_impl(cp, tlen, tok_off, punct, alpha, out):  # pragma: no cover - numba
    """Per document: words, words with a character outside ``PUNCTUATION_SET`` (``punct``
    table), their total length, words with an alphabetic character (``alpha`` table:
    ``str.isalpha``); ``cp`` holds the words' code points back to back, ``tlen`` their
    lengths."""
    pos = 0
    for d in range(tok_off.shape[0] - 1):
        n_kept = kept_len = n_alpha = 0
        for t in range(tok_off[d], tok_off[d + 1]):
            length = tlen[t]
            kept = has_alpha = False
            for j in range(pos, pos + length):
                c = cp[j]
                if punct[c] == 0:
                    kept = True
                if alpha[c] != 0:
                    has_alpha = True
            pos += length
            if kept:
                n_kept += 1
                kept_len += length
            if has_alpha:
                n_alpha += 1
        out[d, 0] = tok_off[d + 1] - tok_off[d]
        out[d, 1] = n_kept
        out[d, 2] = kept_len
        out[d, 3] = n_alpha


def _ngram_impl(cp, tlen, tok_off, top_ns, dup_ns, top_out, dup_out):  # pragma: no cover - numba
    """datatrove's n-gram rules for a batch of documents, in one pass per rule.

    ``cp`` holds every document's words back to back as code points, ``tlen`` the word
    lengths, ``tok_off`` each document's first word. For each document and each ``n`` of
    ``top_ns``: the characters of the most frequent ``" "``-joined n-gram times its count (the
    first such n-gram on ties, as ``Counter.most_common(1)``), -1 without n-grams
    (``find_top_duplicate``). For each ``n`` of ``dup_ns``: the characters of ``""``-joined
    n-grams seen before, scanning left to right and jumping ``n`` words after each
    (``find_all_duplicate``). N-grams are compared by a 64-bit polynomial hash and length, then
    character by character, so the counts are exact.
    """
    base = np.uint64(0x100000001B3)
    fib = np.uint64(0x9E3779B97F4A7C15)
    one = np.uint64(1)
    n_docs = tok_off.shape[0] - 1
    # the words joined by single spaces (per document), and both streams' prefix hashes
    cps = np.empty(cp.shape[0] + tlen.shape[0], np.uint32)
    cp_off = np.empty(n_docs + 1, np.int64)
    cps_off = np.empty(n_docs + 1, np.int64)
    src = dst = 0
    for d in range(n_docs):
        cp_off[d] = src
        cps_off[d] = dst
        for t in range(tok_off[d], tok_off[d + 1]):
            if t > tok_off[d]:
                cps[dst] = 32
                dst += 1
            for _ in range(tlen[t]):
                cps[dst] = cp[src]
                dst += 1
                src += 1
    cp_off[n_docs] = src
    cps_off[n_docs] = dst
    hcp = np.empty(cp.shape[0] + 1, np.uint64)
    hcp[0] = 0
    for i in range(cp.shape[0]):
        hcp[i + 1] = hcp[i] * base + np.uint64(cp[i]) + one
    hcs = np.empty(dst + 1, np.uint64)
    hcs[0] = 0
    for i in range(dst):
        hcs[i + 1] = hcs[i] * base + np.uint64(cps[i]) + one
    pw = np.empty(max(cp.shape[0], dst) + 1, np.uint64)
    pw[0] = one
    for i in range(pw.shape[0] - 1):
        pw[i + 1] = pw[i] * base
    max_tok = 0
    for d in range(n_docs):
        max_tok = max(max_tok, tok_off[d + 1] - tok_off[d])
    cap = 16
    while cap < 2 * max_tok:
        cap *= 2
    stamp = np.zeros(cap, np.int64)
    keys = np.empty(cap, np.uint64)
    lens = np.empty(cap, np.int64)
    where = np.empty(cap, np.int64)
    count = np.empty(cap, np.int64)
    first = np.empty(cap, np.int64)
    start = np.empty(max_tok + 1, np.int64)
    gen = 0
    for d in range(n_docs):
        t0 = tok_off[d]
        m = tok_off[d + 1] - t0
        start[0] = 0
        for i in range(m):
            start[i + 1] = start[i] + tlen[t0 + i]
        size, bits = 16, 4
        while size < 2 * m:
            size *= 2
            bits += 1
        mask = size - 1
        shift = np.uint64(64 - bits)
        for k in range(top_ns.shape[0]):
            n = top_ns[k]
            if m < n:
                top_out[d, k] = -1
                continue
            gen += 1
            best_count, best_first, best_len = 0, 0, 0
            for i in range(m - n + 1):
                a = cps_off[d] + start[i] + i
                length = start[i + n] - start[i] + n - 1
                h = hcs[a + length] - hcs[a] * pw[length]
                slot = np.int64((h * fib) >> shift) & mask
                while True:
                    if stamp[slot] != gen:
                        stamp[slot] = gen
                        keys[slot] = h
                        lens[slot] = length
                        where[slot] = a
                        count[slot] = 1
                        first[slot] = i
                        break
                    if keys[slot] == h and lens[slot] == length:
                        b = where[slot]
                        same = True
                        for j in range(length):
                            if cps[a + j] != cps[b + j]:
                                same = False
                                break
                        if same:
                            count[slot] += 1
                            break
                    slot = (slot + 1) & mask
                c = count[slot]
                if c > best_count or (c == best_count and first[slot] < best_first):
                    best_count, best_first, best_len = c, first[slot], lens[slot]
            top_out[d, k] = best_len * best_count
        for k in range(dup_ns.shape[0]):
            n = dup_ns[k]
            gen += 1
            repeated = 0
            i = 0
            while i < m - n + 1:
                a = cp_off[d] + start[i]
                length = start[i + n] - start[i]
                h = hcp[a + length] - hcp[a] * pw[length]
                slot = np.int64((h * fib) >> shift) & mask
                seen = False
                while stamp[slot] == gen:
                    if keys[slot] == h and lens[slot] == length:
                        b = where[slot]
                        seen = True
                        for j in range(length):
                            if cp[a + j] != cp[b + j]:
                                seen = False
                                break
                        if seen:
                            break
                    slot = (slot + 1) & mask
                if seen:
                    repeated += length
                    i += n
                else:
                    stamp[slot] = gen
                    keys[slot] = h
                    lens[slot] = length
                    where[slot] = a
                    i += 1
            dup_out[d, k] = repeated


@functools.cache
def _kernels() -> tuple[Any, Any] | None:
    """(word stats, n-grams) compiled by numba on first use, or None without numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency; plain Python is the fallback
        return None
    jit = numba.njit(cache=True, nogil=True)
    return jit(_word_stats_impl), jit(_ngram_impl)


class _CharTables:
    """uint8 tables over all code points: in ``PUNCTUATION_SET``; ``str.isalpha`` (filled in
    for the characters of each batch as they are first seen)."""

    def __init__(self) -> None:
        self.punct = np.zeros(0x110000, np.uint8)
        self.punct[[ord(c) for c in PUNCTUATION_SET]] = 1
        self.alpha = np.zeros(0x110000, np.uint8)
        self.alpha[[i for i in range(128) if chr(i).isalpha()]] = 1
        self._known = np.zeros(0x110000, bool)
        self._known[:128] = True

    def cover(self, cp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new = np.unique(cp[cp >= 128])
        new = new[~self._known[new]]
        if new.size:
            self.alpha[new] = [chr(c).isalpha() for c in new.tolist()]
            self._known[new] = True
        return self.punct, self.alpha


@functools.cache
def _char_tables() -> _CharTables:
    return _CharTables()


def _word_stats_python(words: Sequence[str]) -> tuple[int, int, int, int]:
    kept = [w for w in words if any(ch not in PUNCTUATION_SET for ch in w)]
    alpha = sum(any(ch.isalpha() for ch in w) for w in words)
    return len(words), len(kept), sum(map(len, kept)), alpha


def _ngram_python(
    words: Sequence[str], top_ns: Sequence[int], dup_ns: Sequence[int]
) -> tuple[list[int], list[int]]:
    """datatrove's own n-gram code (``get_n_grams``, ``find_top_duplicate``,
    ``find_all_duplicate``) on one document: the reference for the kernel."""
    top = []
    for n in top_ns:
        grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        if not grams:
            top.append(-1)
            continue
        gram, c = Counter(grams).most_common(1)[0]
        top.append(len(gram) * c)
    dup = []
    for n in dup_ns:
        seen: set[str] = set()
        repeated = i = 0
        while i < len(words) - n + 1:
            gram = "".join(words[i : i + n])
            if gram in seen:
                repeated += len(gram)
                i += n
            else:
                seen.add(gram)
                i += 1
        dup.append(repeated)
    return top, dup


class _Words:
    """A batch's words as arrays: code points back to back, lengths, each document's first."""

    def __init__(self, words: Sequence[Sequence[str]]) -> None:
        flat = list(chain.from_iterable(words))
        self.tlen = np.fromiter(map(len, flat), np.int64, len(flat))
        self.tok_off = np.zeros(len(words) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, words), np.int64, len(words)), out=self.tok_off[1:])
        self.cp = np.frombuffer("".join(flat).encode("utf-32-le", "surrogatepass"), np.uint32)


def word_stats(words: Sequence[Sequence[str]], arrays: _Words | None = None) -> np.ndarray:
    """(documents, 4) int64: words, words with a character outside datatrove's punctuation
    (Gopher's "non-symbol" words), their total length, words with an alphabetic character."""
    kernels = _kernels()
    if kernels is None:  # pragma: no cover - numba is a dependency
        return np.array([_word_stats_python(w) for w in words], np.int64).reshape(-1, 4)
    a = arrays or _Words(words)
    out = np.empty((len(words), 4), np.int64)
    kernels[0](a.cp, a.tlen, a.tok_off, *_char_tables().cover(a.cp), out)
    return out


def ngram_stats(
    words: Sequence[Sequence[str]],
    top_ns: Sequence[int],
    dup_ns: Sequence[int],
    arrays: _Words | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(top, dup) int64 arrays of shape (documents, len(top_ns) / len(dup_ns)): the top n-gram
    characters times count (-1: no n-gram) and the duplicated n-gram characters of each
    document's words, as datatrove's Gopher repetition filter counts them."""
    top = np.empty((len(words), len(top_ns)), np.int64)
    dup = np.empty((len(words), len(dup_ns)), np.int64)
    kernels = _kernels()
    if kernels is None:  # pragma: no cover - numba is a dependency
        for d, w in enumerate(words):
            top[d], dup[d] = _ngram_python(list(w), top_ns, dup_ns)
        return top, dup
    a = arrays or _Words(words)
    tops, dups = np.asarray(top_ns, np.int64), np.asarray(dup_ns, np.int64)
    kernels[1](a.cp, a.tlen, a.tok_off, tops, dups, top, dup)
    return top, dup


# --- shared per-batch analysis ---------------------------------------------------------------

_PARAGRAPHS = re.compile(r"\n{2,}")


def _newline_runs(text: str) -> list[str]:
    """``re.split("\\n+", text)`` without the regex: the non-empty lines, and an empty string
    first / last when the text starts / ends with a newline."""
    parts = text.split("\n")
    if "\n\n" not in text:
        return parts
    lines = [x for x in parts if x]
    if parts[0] == "":
        lines.insert(0, "")
    if parts[-1] == "" and len(parts) > 1:
        lines.append("")
    return lines


def _find_duplicates(items: Sequence[str]) -> tuple[int, int]:
    """datatrove's ``find_duplicates``: (repeated items, their characters), every occurrence
    after the first counting."""
    if len(set(items)) == len(items):
        return 0, 0
    counts = Counter(items)
    return len(items) - len(counts), sum(len(x) * (c - 1) for x, c in counts.items() if c > 1)


class _Batch:
    """What the filters share about a batch of documents: each is tokenized once, its lines
    split once, and the word statistics and n-grams of all of them computed in one pass."""

    def __init__(self, texts: Sequence[str], words: Sequence[Sequence[str]] | None = None):
        self.texts = texts
        self._words = words
        self._stats: np.ndarray | None = None
        self._arrays: _Words | None = None
        self._lines: dict[int, list[str]] = {}
        self._ngrams: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[np.ndarray, ...]] = {}

    @property
    def words(self) -> Sequence[Sequence[str]]:
        if self._words is None:
            tok = _tokenizer()
            self._words = [tok.words(t) for t in self.texts]
        return self._words

    def splitlines(self, i: int) -> list[str]:
        got = self._lines.get(i)
        if got is None:
            got = self._lines[i] = self.texts[i].splitlines()
        return got

    @property
    def arrays(self) -> _Words:
        if self._arrays is None:
            self._arrays = _Words(self.words)
        return self._arrays

    def stats(self) -> np.ndarray:
        """(documents, 4) int64: see :func:`word_stats`."""
        if self._stats is None:
            self._stats = word_stats(self.words, self.arrays)
        return self._stats

    def ngrams(self, top_ns: tuple[int, ...], dup_ns: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        key = (top_ns, dup_ns)
        got = self._ngrams.get(key)
        if got is None:
            got = self._ngrams[key] = ngram_stats(self.words, top_ns, dup_ns, self.arrays)
        return got


# --- the filters -----------------------------------------------------------------------------

_LANGUAGES = ("eng", "en", "eng_Latn")


def _fmt(value: float, threshold: float) -> str:
    """``value`` rounded to 2 decimals, or more when that would print the threshold."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if not math.isfinite(value):
        return str(value)
    for nd in range(2, 13):
        s = f"{value:.{nd}f}".rstrip("0").rstrip(".")
        if float(s) != threshold or value == threshold:
            return "0" if s == "-0" else s
    return repr(value)


def _why(name: str, rule: str, value: float, op: str, threshold: Any) -> str:
    return f"{name}:{rule}={_fmt(value, float(threshold))}{op}{threshold}"


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _bad(name: str, param: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{name}: {param}={value!r} {why}")


def _number(name: str, param: str, value: Any, lo: float = 0.0, hi: float = math.inf,
            optional: bool = True, integer: bool = False) -> None:  # fmt: skip
    if value is None and optional:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        rng = f"in [{lo:g}, {hi:g}]" if hi != math.inf else f">= {lo:g}"
        raise _bad(name, param, value, f"must be {what} {rng}" + (" or None" if optional else ""))


def _flag(name: str, param: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _bad(name, param, value, "must be true or false")


class _Filter:
    """Common part of the four filters: the per-document API over a one-document batch."""

    name: ClassVar[str]
    language: str

    def _check_language(self) -> None:
        if self.language not in _LANGUAGES:
            raise _bad(self.name, "language", self.language,
                       f"is not supported: the word tokenizer is English only {_LANGUAGES}")  # fmt: skip

    def _reason(self, batch: _Batch, i: int) -> str | None:
        raise NotImplementedError

    def _features(self, batch: _Batch, i: int) -> dict[str, float]:
        raise NotImplementedError

    def reason(self, text: str, words: Sequence[str] | None = None) -> str | None:
        """None to keep ``text``, else why it is removed (``<filter>:<rule>=<value><op><limit>``).
        ``words``: the document's words as :func:`split_words` gives them, when known."""
        return self._reason(_Batch([text], None if words is None else [words]), 0)

    def features(self, text: str, words: Sequence[str] | None = None) -> dict[str, float]:
        """Each rule's measured value on ``text`` (what the rule compares to its limit)."""
        return self._features(_Batch([text], None if words is None else [words]), 0)


@dataclass
class GopherQualityFilter(_Filter):
    """Gopher's quality rules (datatrove ``GopherQualityFilter``, same parameters).

    A document is removed when its words without a non-punctuation character excluded number
    fewer than ``min_doc_words`` or more than ``max_doc_words``; their mean length is outside
    [``min_avg_word_length``, ``max_avg_word_length``]; ``#`` or ``...`` / ``…`` per word
    exceed ``max_symbol_word_ratio``; more than ``max_bullet_lines_ratio`` of the lines start
    with a bullet (``•`` or ``-``) or more than ``max_ellipsis_lines_ratio`` end with an
    ellipsis; fewer than ``max_non_alpha_words_ratio`` of the words have an alphabetic
    character; or fewer than ``min_stop_words`` distinct ``stop_words`` occur. A limit of
    None or 0 switches its rule off, as in datatrove.

    References
    ----------
    Rae et al. 2021, Gopher, appendix A.1.1; datatrove ``gopher_quality_filter.py``.
    """

    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: Sequence[str] | None = None
    language: str = "eng"
    name: ClassVar[str] = "gopher_quality"

    def __post_init__(self) -> None:
        n = self.name
        for p in ("min_doc_words", "max_doc_words", "min_stop_words"):
            _number(n, p, getattr(self, p), integer=True)
        for p in ("min_avg_word_length", "max_avg_word_length", "max_symbol_word_ratio"):
            _number(n, p, getattr(self, p))
        for p in (
            "max_bullet_lines_ratio",
            "max_ellipsis_lines_ratio",
            "max_non_alpha_words_ratio",
        ):
            _number(n, p, getattr(self, p), hi=1.0)
        for lo, hi in (
            ("min_doc_words", "max_doc_words"),
            ("min_avg_word_length", "max_avg_word_length"),
        ):
            a, b = getattr(self, lo), getattr(self, hi)
            if a and b and a > b:
                raise _bad(n, lo, a, f"must not exceed {hi}={b!r}")
        sw = self.stop_words
        if sw is not None and (isinstance(sw, str) or not all(isinstance(w, str) for w in sw)):
            raise _bad(n, "stop_words", sw, "must be a list of words or None")
        self._check_language()
        self._stop = frozenset(STOP_WORDS if sw is None else sw)

    def _values(self, batch: _Batch, i: int) -> tuple[int, int, float, int]:
        n_words, n_kept, kept_len, n_alpha = (int(x) for x in batch.stats()[i])
        mean = kept_len / n_kept if n_kept else math.nan
        return n_words, n_kept, mean, n_alpha

    def _reason(self, batch: _Batch, i: int) -> str | None:
        text, n = batch.texts[i], self.name
        n_words, n_kept, mean, n_alpha = self._values(batch, i)
        if self.min_doc_words and n_kept < self.min_doc_words:
            return _why(n, "n_words", n_kept, "<", self.min_doc_words)
        if self.max_doc_words and n_kept > self.max_doc_words:
            return _why(n, "n_words", n_kept, ">", self.max_doc_words)
        if self.min_avg_word_length and mean < self.min_avg_word_length:
            return _why(n, "mean_word_length", mean, "<", self.min_avg_word_length)
        if self.max_avg_word_length and mean > self.max_avg_word_length:
            return _why(n, "mean_word_length", mean, ">", self.max_avg_word_length)
        if self.max_symbol_word_ratio:
            r = _ratio(text.count("#"), n_words)
            if r > self.max_symbol_word_ratio:
                return _why(n, "hash_ratio", r, ">", self.max_symbol_word_ratio)
            r = _ratio(text.count("...") + text.count("…"), n_words)
            if r > self.max_symbol_word_ratio:
                return _why(n, "ellipsis_ratio", r, ">", self.max_symbol_word_ratio)
        if self.max_bullet_lines_ratio:
            r = self._bullets(batch.splitlines(i))
            if r > self.max_bullet_lines_ratio:
                return _why(n, "bullet_lines_ratio", r, ">", self.max_bullet_lines_ratio)
        if self.max_ellipsis_lines_ratio:
            r = self._ellipsis_lines(batch.splitlines(i))
            if r > self.max_ellipsis_lines_ratio:
                return _why(n, "ellipsis_lines_ratio", r, ">", self.max_ellipsis_lines_ratio)
        if self.max_non_alpha_words_ratio:
            r = _ratio(n_alpha, n_words)
            if r < self.max_non_alpha_words_ratio:
                return _why(n, "alpha_words_ratio", r, "<", self.max_non_alpha_words_ratio)
        if self.min_stop_words:
            k = len(self._stop.intersection(batch.words[i]))
            if k < self.min_stop_words:
                return _why(n, "stop_words", k, "<", self.min_stop_words)
        return None

    @staticmethod
    def _bullets(lines: list[str]) -> float:
        return _ratio(sum(s.lstrip().startswith(("•", "-")) for s in lines), len(lines))

    @staticmethod
    def _ellipsis_lines(lines: list[str]) -> float:
        return _ratio(sum(s.rstrip().endswith(("...", "…")) for s in lines), len(lines))

    def _features(self, batch: _Batch, i: int) -> dict[str, float]:
        text = batch.texts[i]
        n_words, n_kept, mean, n_alpha = self._values(batch, i)
        lines = batch.splitlines(i)
        return {
            "n_words": float(n_kept),
            "mean_word_length": mean,
            "hash_ratio": _ratio(text.count("#"), n_words),
            "ellipsis_ratio": _ratio(text.count("...") + text.count("…"), n_words),
            "bullet_lines_ratio": self._bullets(lines),
            "ellipsis_lines_ratio": self._ellipsis_lines(lines),
            "alpha_words_ratio": _ratio(n_alpha, n_words),
            "stop_words": float(len(self._stop.intersection(batch.words[i]))),
        }


@dataclass
class GopherRepetitionFilter(_Filter):
    """Gopher's repetition rules (datatrove ``GopherRepetitionFilter``, same parameters).

    A document is removed when it is empty; when more than ``dup_para_frac`` of its paragraphs
    (split at blank lines) or ``dup_line_frac`` of its lines repeat an earlier one, or those
    repeats hold more than ``dup_para_char_frac`` / ``dup_line_char_frac`` of its characters;
    when, for ``(n, frac)`` in ``top_n_grams``, the most frequent word n-gram times its count
    covers more than ``frac`` of the characters; or when, for ``(n, frac)`` in ``dup_n_grams``,
    repeated n-grams cover more than ``frac`` of them. A line/paragraph limit of None or 0 is
    off, as in datatrove.

    References
    ----------
    Rae et al. 2021, Gopher, table A1; datatrove ``gopher_repetition_filter.py``.
    """

    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: Sequence[tuple[int, float]] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: Sequence[tuple[int, float]] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10),
    )  # fmt: skip
    language: str = "eng"
    name: ClassVar[str] = "gopher_repetition"

    def __post_init__(self) -> None:
        n = self.name
        for p in ("dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac"):
            _number(n, p, getattr(self, p), hi=1.0)
        for p in ("top_n_grams", "dup_n_grams"):
            pairs = getattr(self, p)
            try:
                pairs = tuple((int(k), float(f)) for k, f in pairs)
                ok = all(
                    k == kk and k >= 1
                    for (k, _), (kk, _) in zip(pairs, getattr(self, p), strict=True)
                )
                ok = ok and all(0 <= f <= 1 for _, f in pairs)
            except (TypeError, ValueError):
                ok = False
            if not ok or isinstance(getattr(self, p), str):
                raise _bad(
                    n, p, getattr(self, p), "must be a list of (n >= 1, fraction in [0, 1]) pairs"
                )
            setattr(self, p, pairs)
        self._check_language()
        self._top_ns = tuple(k for k, _ in self.top_n_grams)
        self._dup_ns = tuple(k for k, _ in self.dup_n_grams)

    def _lines(self, text: str) -> tuple[float, float, float, float]:
        stripped = text.strip()
        paragraphs = _PARAGRAPHS.split(stripped) if "\n\n" in stripped else [stripped]
        p_dup, p_chars = _find_duplicates(paragraphs)
        lines = _newline_runs(text)
        l_dup, l_chars = _find_duplicates(lines)
        size = len(text)
        return (p_dup / len(paragraphs), p_chars / size, l_dup / len(lines), l_chars / size)

    def _reason(self, batch: _Batch, i: int) -> str | None:
        text, n = batch.texts[i], self.name
        if not text:
            return f"{n}:empty"
        values = self._lines(text)
        limits = (
            self.dup_para_frac,
            self.dup_para_char_frac,
            self.dup_line_frac,
            self.dup_line_char_frac,
        )
        for rule, v, limit in zip(_REP_RULES, values, limits, strict=True):
            if limit and v > limit:
                return _why(n, rule, v, ">", limit)
        top, dup = batch.ngrams(self._top_ns, self._dup_ns)
        size = len(text)
        for k, (g, frac) in enumerate(self.top_n_grams):
            if top[i, k] >= 0 and top[i, k] / size > frac:
                return _why(n, f"top_{g}_gram", top[i, k] / size, ">", frac)
        for k, (g, frac) in enumerate(self.dup_n_grams):
            if dup[i, k] / size > frac:
                return _why(n, f"dup_{g}_gram", dup[i, k] / size, ">", frac)
        return None

    def _features(self, batch: _Batch, i: int) -> dict[str, float]:
        text = batch.texts[i]
        if not text:
            values = (0.0,) * 4
            top = np.zeros((1, len(self._top_ns)))
            dup = np.zeros((1, len(self._dup_ns)))
            i = 0
        else:
            values = self._lines(text)
            top, dup = batch.ngrams(self._top_ns, self._dup_ns)
        size = max(len(text), 1)
        out = dict(zip(_REP_RULES, values, strict=True))
        out.update(
            (f"top_{g}_gram", max(float(top[i, k]), 0.0) / size) for k, g in enumerate(self._top_ns)
        )
        out.update((f"dup_{g}_gram", float(dup[i, k]) / size) for k, g in enumerate(self._dup_ns))
        return out


_REP_RULES = ("dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac")


@dataclass
class C4QualityFilter(_Filter):
    """C4's rules (datatrove ``C4QualityFilter``, same parameters), as a decision only.

    Lines (or spaCy sentences with ``split_paragraph=False``) are dropped when a word is longer
    than ``max_word_length``, when they do not end in terminal punctuation (``. ? ! " '``, not
    ``...``; Wikipedia citations such as ``[1]`` removed first), have fewer than
    ``min_words_per_line`` words, mention ``javascript`` or a policy phrase (cookies, terms of
    use); a document is removed when a remaining line holds ``lorem ipsum`` or ``{``, or when
    the remaining lines hold fewer than ``min_num_sentences`` sentences. -1 switches a count
    rule off. datatrove rewrites the kept document to its remaining lines; curamix keeps the
    text as it is (a curamix filter never rewrites text) and only takes the same decision.

    References
    ----------
    Raffel et al. 2020, C4, section 2.2; datatrove ``c4_filters.py``.
    """

    split_paragraph: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True
    language: str = "eng"
    name: ClassVar[str] = "c4_quality"

    def __post_init__(self) -> None:
        n = self.name
        for p in ("split_paragraph", "remove_citations", "filter_no_terminal_punct",
                  "filter_lorem_ipsum", "filter_javascript", "filter_curly_bracket", "filter_policy"):  # fmt: skip
            _flag(n, p, getattr(self, p))
        for p in ("min_num_sentences", "min_words_per_line", "max_word_length"):
            _number(n, p, getattr(self, p), lo=-1, optional=False, integer=True)
        self._check_language()

    def _scan(self, batch: _Batch, i: int, full: bool) -> tuple[str | None, int, bool, bool]:
        """(first document-level rule hit, sentences in the remaining lines, lorem ipsum seen,
        curly bracket seen). With ``full=False`` stop at the first hit and stop counting at
        ``min_num_sentences``."""
        text = batch.texts[i]
        tok = _tokenizer()
        lines = batch.splitlines(i) if self.split_paragraph else tok.sentences(text)
        count = self.min_num_sentences != -1
        enough = self.min_num_sentences if not full else math.inf
        first: str | None = None
        lorem = curly = False
        n_sent = 0
        for line in lines:
            line = line.strip()
            words = line.split()
            if (
                self.max_word_length != -1
                and max(map(len, words), default=0) > self.max_word_length
            ):
                continue
            if self.remove_citations and "[" in line:
                line = CITATION_REGEX.sub("", line)
            if self.filter_no_terminal_punct and (
                not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)
            ):
                continue
            if len(words) < self.min_words_per_line:
                continue
            low = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in low:
                lorem, first = True, first or "lorem_ipsum"
                if not full:
                    break
                continue
            if self.filter_javascript and "javascript" in low:
                continue
            if self.filter_curly_bracket and "{" in line:
                curly, first = True, first or "curly_bracket"
                if not full:
                    break
                continue
            if self.filter_policy and any(p in low for p in POLICY_SUBSTRINGS):
                continue
            if count and n_sent < enough:
                n_sent += tok.n_sentences(line) if self.split_paragraph else 1
        return first, n_sent, lorem, curly

    def _reason(self, batch: _Batch, i: int) -> str | None:
        first, n_sent, _, _ = self._scan(batch, i, full=False)
        if first is not None:
            return f"{self.name}:{first}"
        if n_sent < self.min_num_sentences:
            return _why(self.name, "n_sentences", n_sent, "<", self.min_num_sentences)
        return None

    def _features(self, batch: _Batch, i: int) -> dict[str, float]:
        _, n_sent, lorem, curly = self._scan(batch, i, full=True)
        return {
            "n_sentences": float(n_sent),
            "lorem_ipsum": float(lorem),
            "curly_bracket": float(curly),
        }


@dataclass
class FineWebQualityFilter(_Filter):
    """FineWeb's own rules (datatrove ``FineWebQualityFilter``, same parameters).

    Over the non-blank lines: a document is removed when it has none; when fewer than
    ``line_punct_thr`` of them end in one of ``stop_chars`` (datatrove's terminal punctuation;
    with ``line_punct_exclude_zero``, a document with none at all is kept); when more than
    ``short_line_thr`` are at most ``short_line_length`` characters; when lines repeating an
    earlier one hold more than ``char_duplicates_ratio`` of the characters (newlines not
    counted); or when it has more than ``new_line_ratio`` newlines per word.

    References
    ----------
    Penedo et al. 2024, The FineWeb Datasets, section 3.6; datatrove
    ``fineweb_quality_filter.py``.
    """

    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    stop_chars: Sequence[str] | None = None
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3
    language: str = "eng"
    name: ClassVar[str] = "fineweb_quality"

    def __post_init__(self) -> None:
        n = self.name
        for p in ("line_punct_thr", "short_line_thr", "char_duplicates_ratio"):
            _number(n, p, getattr(self, p), hi=1.0, optional=False)
        _number(n, "new_line_ratio", self.new_line_ratio, optional=False)
        _number(n, "short_line_length", self.short_line_length, optional=False, integer=True)
        _flag(n, "line_punct_exclude_zero", self.line_punct_exclude_zero)
        sc = self.stop_chars
        if sc is not None and (
            isinstance(sc, str) or not sc or not all(isinstance(c, str) and c for c in sc)
        ):
            raise _bad(n, "stop_chars", sc, "must be a non-empty list of strings or None")
        self._check_language()
        self._stops = tuple(TERMINAL_PUNCTUATION) if sc is None else tuple(sc)
        self._stop_set = frozenset(self._stops) if all(len(c) == 1 for c in self._stops) else None

    def _values(self, batch: _Batch, i: int) -> tuple[float, float, float, float] | None:
        text = batch.texts[i]
        lines = [x for x in text.split("\n") if x.strip() != ""]
        if not lines:
            return None
        if self._stop_set is not None:
            stops = self._stop_set
            ended = sum(x[-1] in stops for x in lines)
        else:
            ended = sum(x.endswith(self._stops) for x in lines)
        size = self.short_line_length
        short = sum(len(x) <= size for x in lines)
        chars = _find_duplicates(lines)[1]
        n_words = int(batch.stats()[i, 0])
        newlines = text.count("\n")
        return (
            ended / len(lines),
            short / len(lines),
            chars / (len(text) - newlines),
            newlines / n_words if n_words else (math.inf if newlines else 0.0),
        )

    def _reason(self, batch: _Batch, i: int) -> str | None:
        n = self.name
        values = self._values(batch, i)
        if values is None:
            return f"{n}:empty"
        punct, short, dup, per_word = values
        if punct < self.line_punct_thr and not (punct == 0 and self.line_punct_exclude_zero):
            return _why(n, "line_punct_ratio", punct, "<", self.line_punct_thr)
        if short > self.short_line_thr:
            return _why(n, "short_line_ratio", short, ">", self.short_line_thr)
        if dup > self.char_duplicates_ratio:
            return _why(n, "char_dup_ratio", dup, ">", self.char_duplicates_ratio)
        if per_word > self.new_line_ratio:
            return _why(n, "list_ratio", per_word, ">", self.new_line_ratio)
        return None

    def _features(self, batch: _Batch, i: int) -> dict[str, float]:
        values = self._values(batch, i) or (0.0, 0.0, 0.0, 0.0)
        return dict(
            zip(
                ("line_punct_ratio", "short_line_ratio", "char_dup_ratio", "list_ratio"),
                values,
                strict=True,
            )
        )


HEURISTICS: dict[str, type[_Filter]] = {
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
}
"""The heuristic filters by name (curamix.config.HEURISTIC_FILTERS holds the same names)."""

_ORDER = ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")
_BATCH_DOCS = 512
_BATCH_CHARS = 8_000_000


def _make(name: str, params: Any) -> _Filter:
    cls = HEURISTICS[name]
    if params is True:
        return cls()
    if not isinstance(params, Mapping):
        raise ValueError(
            f"{name}: expected true, false, null or a mapping of parameters, got {params!r}"
        )
    known = [f.name for f in fields(cls)]
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; known: {known}")
    return cls(**params)


class HeuristicFilters:
    """The enabled heuristic filters, run together: each document is tokenized once and its
    lines split once for all of them.

    Parameters
    ----------
    params : filter name -> its parameters (a mapping; ``True`` or ``{}``: the published
        defaults; ``None`` or ``False``: off). Filters run in datatrove's FineWeb order:
        gopher_repetition, gopher_quality, c4_quality, fineweb_quality.

    References
    ----------
    Penedo et al. 2024, The FineWeb Datasets (the filter order); datatrove 0.10.1.
    """

    def __init__(self, params: Mapping[str, Mapping[str, Any] | bool | None]) -> None:
        unknown = [k for k in params if k not in HEURISTICS]
        if unknown:
            raise ValueError(f"unknown heuristic filter(s) {unknown}; known: {list(HEURISTICS)}")
        self.filters: dict[str, _Filter] = {}
        for name in _ORDER:
            p = params.get(name)
            if p is None or p is False:
                continue
            self.filters[name] = _make(name, p)
        self.names: tuple[str, ...] = tuple(self.filters)

    def _batches(self, texts: Sequence[str]):
        i = 0
        while i < len(texts):
            j, chars = i, 0
            while j < len(texts) and j - i < _BATCH_DOCS and (chars < _BATCH_CHARS or j == i):
                chars += len(texts[j])
                j += 1
            yield i, _Batch(texts[i:j])
            i = j

    def reasons(self, texts: Sequence[str]) -> list[str | None]:
        """Per document: the first failing filter's reason (filters in :attr:`names` order), or
        None to keep it."""
        out: list[str | None] = [None] * len(texts)
        filters = list(self.filters.values())
        for start, batch in self._batches(texts):
            for i in range(len(batch.texts)):
                for f in filters:
                    r = f._reason(batch, i)
                    if r is not None:
                        out[start + i] = r
                        break
        return out

    def decisions(self, texts: Sequence[str]) -> dict[str, list[str | None]]:
        """Each enabled filter's own reason (or None) per document, every filter on every
        document (for per-filter removal counts)."""
        out: dict[str, list[str | None]] = {n: [] for n in self.names}
        for _, batch in self._batches(texts):
            for name, f in self.filters.items():
                out[name] += [f._reason(batch, i) for i in range(len(batch.texts))]
        return out

    def features(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``"<filter>.<rule>"`` -> each document's measured value (float64), every rule of
        every enabled filter (for ROC-AUC against human labels)."""
        empty = _Batch([""])
        cols: dict[str, list[float]] = {
            f"{name}.{rule}": []
            for name, f in self.filters.items()
            for rule in f._features(empty, 0)
        }
        for _, batch in self._batches(texts):
            for name, f in self.filters.items():
                for i in range(len(batch.texts)):
                    for rule, v in f._features(batch, i).items():
                        cols[f"{name}.{rule}"].append(v)
        return {k: np.asarray(v, np.float64) for k, v in cols.items()}
