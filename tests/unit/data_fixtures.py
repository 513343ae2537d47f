"""Tiny MovieLens files in every layout, written by the tests themselves."""

from __future__ import annotations

import zipfile
from pathlib import Path

ML100K_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
    "3|Caf\xe9 (1996)|01-Jan-1996||http://x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0\n"
)
ML100K_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n"


def write_ml100k(folder: Path, ratings: list[str]) -> Path:
    """Write u.data (tab-separated), u.item and u.user (pipe-separated, latin-1)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{r}\n" for r in ratings))
    (folder / "u.item").write_bytes(ML100K_ITEM.encode("latin-1"))
    (folder / "u.user").write_text(ML100K_USER)
    return folder


def write_ml1m(folder: Path, ratings: list[str]) -> Path:
    """Write ratings.dat / movies.dat / users.dat with '::' separators in latin-1."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{r}\n" for r in ratings))
    movies = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Caf\xe9 Society (2016)::Drama\n"
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    return folder


def write_csv(folder: Path, ratings: list[str]) -> Path:
    """Write ratings.csv / movies.csv as in ml-latest-small and ml-25m."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                        + "".join(f"{r}\n" for r in ratings))
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Untitled,(no genres listed)\n")
    return folder


def write_atomic(folder: Path, ratings: list[str]) -> Path:
    """Write RecBole atomic files (typed headers, tab-separated)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{r}\n" for r in ratings))
    (folder / "tiny.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tGoldenEye\t1995\tAction\n")
    (folder / "tiny.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n")
    return folder


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """Zip ``folder`` the way GroupLens does: files under a top-level folder."""
    with zipfile.ZipFile(zip_path, "w") as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, f"{folder.name}/{file.name}")
    return zip_path
