class SeriesReader:  # placeholder
    pass
