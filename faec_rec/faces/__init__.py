"""faec_rec/faces"""
