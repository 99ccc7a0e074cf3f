"""temseg.daemon"""
