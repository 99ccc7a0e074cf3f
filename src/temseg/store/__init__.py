"""temseg.store"""
