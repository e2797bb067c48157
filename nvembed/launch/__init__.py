"""Ray glue: the only package of nvembed that imports Ray (DESIGN.md §5 rule 7)."""
