"""raretarget.query: see the README's roadmap; filled in by later stages."""
