"""Model layer: radial basis, spherical harmonics, scalar backbone, heads, λ-tensor bases."""
