def add_arguments(parser):
    pass


def run(args, out):
    raise NotImplementedError
