module github.com/clinkme/clinkd

go 1.26
