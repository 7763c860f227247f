"""MkDocs hooks (mkdocs.yml): publish the bundled checkpoints' sample grids with the site.

The grids live beside the weights they were drawn from (checkpoints/NAME/samples_*.png, named in
each model card); the pages link them as ``checkpoints/NAME/samples_*.png``, and this hook adds
those files to the site under the same paths instead of keeping copies in docs/.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def on_files(files: Files, config) -> Files:
    for grid in sorted(ROOT.glob("checkpoints/*/samples_*.png")):
        uri = grid.relative_to(ROOT).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(grid)))
    return files
