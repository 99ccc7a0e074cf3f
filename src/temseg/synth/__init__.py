"""temseg.synth"""
