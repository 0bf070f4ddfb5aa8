"""How far the ILC's decoder can go: PSNR of f^-1(y, 0) for the analysis y (the z = 0
ceiling) and for the best y found by 150 Adam steps on the MSE alone (no quantisation, no
rate), on 256x256 centre crops.

    python scripts/decoder_ceiling.py reference/ilc_reference/checkpoints/ilc-q2.safetensors IMAGE...
"""
import sys, math, numpy as np, torch
from ilc_reference.checkpoint import load_model
from ilc_export.pipeline.image_io import load_rgb, model_input
torch.set_num_threads(1)
m = load_model(sys.argv[1]); m.eval()
for p in m.parameters(): p.requires_grad_(False)
for path in sys.argv[2:]:
    img = load_rgb(path)[0]; t, l = (img.shape[0]-256)//2, (img.shape[1]-256)//2
    x = torch.from_numpy(model_input(np.ascontiguousarray(img[t:t+256, l:l+256])))
    with torch.no_grad():
        y, z = m.analysis(x); z0 = m.zeros_z(y)
        p0 = -10*math.log10(torch.mean((m.synthesis(y, z0).clamp(0,1)-x)**2).item())
    y = y.clone().requires_grad_(True); opt = torch.optim.Adam([y], lr=0.003); best = p0
    for it in range(150):
        mse = torch.mean((m.synthesis(y, z0)-x)**2); best = max(best, -10*math.log10(mse.item()))
        opt.zero_grad(); mse.backward(); opt.step()
    print(path[-11:], "z=0 ceiling %.2f dB -> best y %.2f dB" % (p0, best), flush=True)
