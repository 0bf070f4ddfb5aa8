"""The codec core (tables, intnet, entropy, bitstream) runs without ever importing torch."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import BLOCK_TORCH

SCRIPT = BLOCK_TORCH + textwrap.dedent(r'''
    import numpy as np
    from safetensors.numpy import save_file

    import ilc_export.codec  # the package and its eager imports
    from ilc_export.codec import bitstream, entropy, intnet, tables
    from ilc_export.codec.tables import CodecTables
    from ilc_export.contract.model_id import model_id_of_file

    def rows(pmfs):
        out = np.full((len(pmfs), max(map(len, pmfs)) + 1), 2**16, np.int32)
        for i, p in enumerate(pmfs):
            out[i, : len(p) + 1] = np.concatenate([[0], np.cumsum(p)])
        return out

    prior = [[1, 200, 3000, 59000, 3000, 200, 135], [5000, 10000, 20000, 20000, 10000, 535, 1]]
    gauss = [[1, 89, 10309, 44739, 10309, 88, 1], [8, 80, 555, 2489, 7266, 13814, 17112, 13814, 7266, 2489, 555, 80, 8]]
    w = lambda shape, m: ((np.arange(np.prod(shape)) * 7919) % m - m // 2).reshape(shape).astype(np.int32)
    tab = CodecTables(16, rows(prior), np.array([-3, -2], np.int32), np.array([7, 7], np.int32), rows(gauss),
                      np.array([2, 5], np.int32), (w((8, 2, 3, 3), 7), w((8, 2, 3, 3), 9), w((3, 2, 3, 3), 11)),
                      (np.zeros(8, np.int64), np.ones(8, np.int64), np.zeros(3, np.int64)),
                      np.array([1, 3], np.int32), np.array([255, 255], np.int64), np.array([0], np.int64), 4)
    path = sys.argv[1]
    save_file({**tab.to_tensors(), "net.weight": np.ones(3, np.float32)}, path, metadata={"config": "{}"})

    loaded = CodecTables.load(path)
    mid = model_id_of_file(path)
    codec = entropy.EntropyCodec(loaded)
    w_hat = np.array([[[-3, 3], [0, 1]], [[-2, 4], [1, 0]]], np.int32)
    y = (np.arange(3 * 8 * 8).reshape(3, 8, 8) % 13 - 6).astype(np.int32)
    y[0, 0, 0] = 123456
    streams = codec.encode(w_hat, y)
    h = bitstream.Header(bytes.fromhex(mid), 100, 120, 128, 128)
    hdr, st = bitstream.unpack(bitstream.pack(h, streams))
    bitstream.check_model(hdr, mid)
    w2, y2 = codec.decode(st, w_hat.shape, y.shape)
    assert (w2 == w_hat).all() and (y2 == y).all()
    assert intnet.scale_indices(loaded, w_hat).shape == y.shape
    bad = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
    assert not bad, bad
    print("OK no torch")
''')


def test_codec_core_never_imports_torch(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "t.safetensors")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK no torch" in r.stdout
