"""Regenerate (or check) the Python stubs from the .proto files.

    python -m protos.codegen          # write thinkroute/v1/*_pb2*.py next to the .proto files
    python -m protos.codegen --check  # exit 1 if the checked-in stubs differ from a fresh generation
"""
from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ["thinkroute/v1/worker.proto", "thinkroute/v1/router.proto", "thinkroute/v1/cluster.proto"]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) on PROTO_FILES into out_dir; return the generated files."""
    from grpc_tools import protoc  # dev dependency
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(PROTO_ROOT / f) for f in PROTO_FILES],
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}: {' '.join(args)}")
    return sorted(p for p in out_dir.rglob("*.py*") if p.is_file() and "_pb2" in p.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on drift")
    args = parser.parse_args(argv)
    if not args.check:
        written = generate(PROTO_ROOT)
        print("\n".join(str(p.relative_to(PROTO_ROOT)) for p in written))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        drift = []
        for f in fresh:
            rel = f.relative_to(tmp)
            mine = PROTO_ROOT / rel
            if not mine.exists() or not filecmp.cmp(f, mine, shallow=False):
                drift.append(str(rel))
        if drift:
            print("stubs differ from the .proto files (run `python -m protos.codegen`): " + ", ".join(drift))
            return 1
    print("stubs match the .proto files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
