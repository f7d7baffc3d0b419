"""General redundancy (paper section 5).

Co-moments in one streaming pass, Pearson r and CKA, correlation clustering, the jobs.
"""
