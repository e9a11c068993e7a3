"""The tokenizer's CPU time a document as the engine calls it (`tokenize_texts`), for
documents of several lengths: the bench corpus' (half as many words as the window has tokens,
as `bench_worker` writes them) and Latin texts of each --long-chars length, which a truncating
run need only read a prefix of; each truncated at --max-length and, with --modes
truncate,chunk, cut into windows (every token kept: a text over 16 KiB is tokenized piece by
piece, pipeline/engine/tokenize.py). Pieces of 128 documents, as a worker's; the best of
--repeats passes (process CPU time: the Rust tokenizer's threads included).

    python -m benchmarks.bench_tokenize --documents 1000 --max-length 512
    python -m benchmarks.bench_tokenize --long-chars 40000 --modes truncate,chunk
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.report import run_facts, save

PIECE = 128  # documents a call, as a worker's piece


def corpora(documents: int, window: int, long_chars: list[int]) -> dict[str, list[str]]:
    from pipeline.engine.synthetic_text import TextGenerator

    generator = TextGenerator(7)
    found = {"bench": [generator.document(window // 2) for _ in range(documents)]}
    for chars in long_chars:
        texts = []
        for _ in range(documents):
            text = ""
            while len(text) < chars:
                text += generator.sentence(15, "latin") + " "
            texts.append(text[:chars])
        found[f"latin-{chars}-chars"] = texts
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="stub:full", help="whose tokenizer")
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--long-chars", default="8000", help="comma-separated lengths")
    parser.add_argument("--modes", default="truncate", help="truncate and/or chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, help="model cache (default: m3pipe's)")
    parser.add_argument("--out", type=Path, help="save the JSON here (default: .results/)")
    args = parser.parse_args(argv)

    from pipeline.engine.model import load_model
    from pipeline.engine.tokenize import tokenize_texts
    from pipeline.settings import Settings
    from schemas.options import EncodeOptions

    cache = args.cache_dir or Settings().cache_dir
    model = load_model(args.model, device="cpu", precision="fp32", cache_dir=cache)
    long_chars = [int(chars) for chars in args.long_chars.split(",")]
    report: dict = {**run_facts(), "model": args.model, "max_length": args.max_length,
                    "documents": args.documents, "corpora": {}}  # fmt: skip
    for name, texts in corpora(args.documents, args.max_length - 2, long_chars).items():
        whole = model.tokenizer(texts[:100], add_special_tokens=False)["input_ids"]
        report["corpora"][name] = {
            "characters_a_document": round(sum(map(len, texts)) / len(texts)),
            "tokens_a_document_whole": round(sum(map(len, whole)) / len(whole)),
        }
        for mode in args.modes.split(","):
            options = EncodeOptions(max_length=args.max_length, long_docs=mode)
            best, kept = float("inf"), 0
            for _ in range(args.repeats):
                started = time.process_time()
                for start in range(0, len(texts), PIECE):
                    shard = tokenize_texts(model.tokenizer, texts[start : start + PIECE],
                                           options, model.cls_id, model.eos_id)  # fmt: skip
                    kept += int(shard.lengths.sum())
                best = min(best, time.process_time() - started)
            report["corpora"][name][mode] = {
                "tokens_a_document_kept": round(kept / args.repeats / len(texts)),
                "cpu_ms_a_document": round(best / len(texts) * 1e3, 3),
            }
        print(f"{name}: {report['corpora'][name]}")
    save(report, "tokenize", "cpu", args.model, args.out)


if __name__ == "__main__":
    main()
