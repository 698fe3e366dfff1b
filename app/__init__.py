"""The allconv Streamlit app: explore guided backprop, deconvnet and backprop on the All Convolutional Nets.

Run ``allconv-app`` (or ``streamlit run app/main.py``). The script is ``app/main.py``; the computations it shows live
in ``app.compute`` (Streamlit-free) and are cached by ``app.cache``.
"""

from .cli import main

__all__ = ["main"]
