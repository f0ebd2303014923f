"""Evaluation, pure computation: a trained model's test metrics and raw outputs (`metrics`), the
numerics that tell the heads apart (`numerics`), every metric in one registry (`registry`), and the
reference notebooks' printouts (`printout`)."""
