"""temseg.trainer"""
