from geofleet.cli import main

main()
