from geofleet.launcher import main

main()
