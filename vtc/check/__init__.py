"""`vtc check` and `vtc report diff`: a bundle's report against a stored baseline.

`read` loads either side (bundle dir or report.json) and refuses pairs that cannot
be compared; `compare` builds the rows (`rows` for exact, limit and drop checks,
`speed` for bootstrap-interval speed verdicts); `render` prints the table and
writes JSON and JUnit XML.
"""

from vtc.check.compare import Comparison, compare, tolerances
from vtc.check.read import CheckInputError, Side, read_side

__all__ = ["CheckInputError", "Comparison", "Side", "compare", "read_side", "tolerances"]
