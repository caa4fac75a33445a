"""raretarget.index: see the README's roadmap; filled in by later stages."""
