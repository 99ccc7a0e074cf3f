"""temseg.stream"""
