"""The HTML report of a transfer run and what it is built from.

``html`` writes the page, ``figures`` draws its matplotlib figures, ``sources`` resolves
the completed runs a page reads (also used by :mod:`raydund.explore`).
"""
