"""Chapter 05's exercises: three backward passes, each against finite differences of the
package's forward (layers.layernorm_forward, layers.gelu_forward, layers.mlp_forward)."""
import numpy as np

from .. import layers
from .checker import grad_exercise, randn, register

register(
    "layernorm_backward", "05-layernorm-mlp",
    "layernorm_backward(dout, cache) -> dx, dw, db;  cache = (xhat, w, rstd)", 1e-6,
    grad_exercise(
        layers.layernorm_forward,
        ("dx", "dw", "db"),
        [
            ("x (4, 5)", lambda g: (randn(g, 4, 5), randn(g, 5), randn(g, 5)), {}),
            ("x (2, 3, 6), shifted and scaled", lambda g: (3 * randn(g, 2, 3, 6) + 2, randn(g, 6), randn(g, 6)), {}),
        ],
    ),
)

register(
    "gelu_backward", "05-layernorm-mlp", "gelu_backward(dout, cache) -> dx;  cache = (x,)", 1e-6,
    grad_exercise(
        layers.gelu_forward,
        ("dx",),
        [("x (3, 7)", lambda g: (2 * randn(g, 3, 7),), {}), ("x in [-6, 6]", lambda g: (np.linspace(-6, 6, 25),), {})],
    ),
)

register(
    "mlp_backward", "05-layernorm-mlp",
    "mlp_backward(dout, cache) -> dx, dw_fc, db_fc, dw_proj, db_proj;  cache = (fc_cache, gelu_cache, proj_cache, ops)",
    1e-6,
    grad_exercise(
        layers.mlp_forward,
        ("dx", "dw_fc", "db_fc", "dw_proj", "db_proj"),
        [("x (2, 3, 4), H = 8", lambda g: (randn(g, 2, 3, 4), randn(g, 4, 8), randn(g, 8), randn(g, 8, 4), randn(g, 4)), {})],
    ),
)
