"""The shims over nerfstudio's pinned libraries: viser's icon reader, indexed."""

from __future__ import annotations

import importlib
import tarfile

import pytest

from ednerf_ns.compat import index_viser_icons

viser_icons = pytest.importorskip("viser._icons")


@pytest.fixture
def restore_viser_reader():
    """viser's own reader in place (a pipeline built earlier in this process has indexed it), restored after."""
    modules = [importlib.import_module(m) for m in ("viser._icons", "viser._gui_api", "viser._gui_handles")]
    saved = [m.svg_from_icon for m in modules]
    original = getattr(saved[0], "viser_reader", saved[0])
    for module in modules:
        module.svg_from_icon = original
    yield original
    for module, reader in zip(modules, saved, strict=True):
        module.svg_from_icon = reader


def test_indexed_icons_are_viser_own_bytes(restore_viser_reader, monkeypatch):
    original = restore_viser_reader
    assert not getattr(original, "indexed_by_ednerf", False)
    assert index_viser_icons()
    import viser._gui_api as gui_api
    import viser._gui_handles as gui_handles

    indexed = viser_icons.svg_from_icon
    assert indexed is not original and indexed.indexed_by_ednerf
    # the modules that took the name at import call the indexed reader too (the viewer's buttons and tabs)
    assert gui_api.svg_from_icon is indexed and gui_handles.svg_from_icon is indexed
    # icons nerfstudio's viewer asks for, and the first and last of the tarball
    names = ("folder", "player-play", "video", "trash", "x", "a-b", "zzz-off")
    expected = {name: original(name) for name in names}
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    assert {name: indexed(name) for name in names} == expected
    assert len(opened) == 1, "one scan of the tarball (the index), not one per icon"
    assert index_viser_icons() and viser_icons.svg_from_icon is indexed  # applying twice changes nothing
    with pytest.raises(KeyError):  # an unknown name gets viser's own error
        indexed("no-such-icon-anywhere")
