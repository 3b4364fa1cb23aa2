"""`python -m inkmcp.providers.compute.local.nginx_module [--nginx PATH] [DIR]`: build InkMCP's nginx module for
the installed nginx (as root). Prints the module's path; exits 1 with the reason otherwise (the proxy then runs the
headers-more config, see the package's docstring). The same as build.py, which `make install` runs."""

from inkmcp.providers.compute.local.nginx_module.build import main

if __name__ == "__main__":
    main()
